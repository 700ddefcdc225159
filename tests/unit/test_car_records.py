"""`skyexport export REPO.car --collections`: every collection of a repository as
records/NSID.EXT (listRecords JSON, CSV of named columns), compared record for record with
an independent reader (atmst's CAR blockstore and MST walker, cbrrr's DAG-CBOR decoder in
atproto-JSON mode), CSV columns pinned byte for byte, strictness and verify."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from skyexport import export, verify
from skyexport.errors import ArchiveError, OptionError
from skyexport.sources.car.info import car_info
from skyexport.testing.carwrite import cid_for, dag_cbor, synth_car, write_car

from helpers.cli import assert_failed, child_setup, run
from helpers.hostile import Car, write

atmst = pytest.importorskip("atmst", reason="atmst (test extra) is not installed")
cbrrr = pytest.importorskip("cbrrr", reason="cbrrr (test extra) is not installed")

CARS = Path(__file__).parent.parent / "car"
BSKY = CARS / "bsky-app.z72i7hdynmk6r22z27h6tvur.car"
WHOLE = [BSKY, CARS / "paul_staging.repo.car", CARS / "offsets.repo.car",
         CARS / "bnewbold.robocracy.org.20250310005405.car"]
DID = "did:plc:records"


def _pairs(v: Any) -> Any:
    """A decoded value with every map as a list of (key, value) in its order."""
    if isinstance(v, dict):
        return [(k, _pairs(x)) for k, x in v.items()]
    if isinstance(v, list):
        return [_pairs(x) for x in v]
    return v


def _hook(p: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return list(p)


def reference(car: Path) -> list[tuple[str, str, Any]]:
    """(uri, cid, value) of every record, in MST key order, by atmst + cbrrr."""
    from atmst.blockstore.car_file import ReadOnlyCARBlockStore
    from atmst.mst.node_store import NodeStore
    from atmst.mst.node_walker import NodeWalker
    from cbrrr import decode_dag_cbor

    with open(car, "rb") as f:
        bs = ReadOnlyCARBlockStore(f)
        commit = decode_dag_cbor(bs.get_block(bytes(bs.car_root)))
        return [(f"at://{commit['did']}/{k}", v.encode("base32"),
                 _pairs(decode_dag_cbor(bs.get_block(bytes(v)), atjson_mode=True)))
                for k, v in NodeWalker(NodeStore(bs), commit["data"]).iter_kv()]


def records_of(directory: Path, fmt: str) -> dict[str, Any]:
    m = json.loads((directory / "manifest.json").read_text())
    return m["records"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("car", WHOLE, ids=lambda p: p.name[:20])
def test_every_record_equals_an_independent_reader(car: Path, tmp_path: Path) -> None:
    """Each collection's file holds info's count of records, and the records, in key order
    across the files (sorted by name, as the MST sorts keys), equal atmst + cbrrr's
    decoding record for record, map keys in the same order."""
    res = export(car, tmp_path, format="jsonl", collections="all")
    d = res.directory
    assert d is not None
    counts = car_info(car, tmp_path)["collections"]
    listed = records_of(d, "jsonl")
    assert {n.split("/")[1][:-len(".jsonl")]: v["records"] for n, v in listed.items()} \
        == counts
    ours = []
    for name in sorted(listed):
        for line in (d / name).read_bytes().splitlines():
            o = dict(json.loads(line, object_pairs_hook=_hook))
            assert list(dict(json.loads(line, object_pairs_hook=_hook))) == \
                ["uri", "cid", "value"]
            ours.append((o["uri"], o["cid"], o["value"]))
    assert ours == reference(car)
    assert verify(d).ok


def _go_indent(value: Any, level: int) -> str:
    """json.dumps with Go's indent style, U+2028/9 escaped as Go escapes them."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return text.replace("\n", "\n" + "  " * level)


def test_json_is_the_jsonl_records_indented(tmp_path: Path) -> None:
    """records/NSID.json is posts.json's layout (`[`, two-space indent, `": "`) of the
    same objects the .jsonl file holds, record for record."""
    dj = export(BSKY, tmp_path / "j", format="json", collections="all").directory
    dl = export(BSKY, tmp_path / "l", format="jsonl", collections="all").directory
    assert dj is not None and dl is not None
    for name in records_of(dl, "jsonl"):
        objs = [json.loads(x) for x in (dl / name).read_bytes().splitlines()]
        want = "[\n" + ",\n".join("  " + _go_indent(o, 1) for o in objs) + "\n]\n"
        got = (dj / name.replace(".jsonl", ".json")).read_text()
        assert got == want, name
    assert verify(dj).ok


def test_posts_whole_keep_facets_langs_and_reply_root(tmp_path: Path) -> None:
    """A post in records/app.bsky.feed.post.jsonl keeps what posts.* has no column for:
    a link facet's full URL, langs, tags, the reply root."""
    post = {"$type": "app.bsky.feed.post", "text": "see bsky.app/profile/bsky...",
            "createdAt": "2024-01-01T00:00:00Z", "langs": ["en", "ja"], "tags": ["t"],
            "facets": [{"index": {"byteStart": 4, "byteEnd": 28}, "features": [
                {"$type": "app.bsky.richtext.facet#link",
                 "uri": "https://bsky.app/profile/bsky.app"}]}],
            "reply": {"root": {"uri": "at://did:plc:a/app.bsky.feed.post/1", "cid": "bafyr"},
                      "parent": {"uri": "at://did:plc:b/app.bsky.feed.post/2",
                                 "cid": "bafyp"}}}
    car = tmp_path / "r.car"
    write_car(car, DID, {"app.bsky.feed.post/3kaaaaaaaaaa2": post})
    d = export(car, tmp_path / "o", format="jsonl", collections="app.bsky.feed.post").directory
    assert d is not None
    (line,) = (d / "records/app.bsky.feed.post.jsonl").read_bytes().splitlines()
    assert json.loads(line)["value"] == post
    assert b'"uri":"https://bsky.app/profile/bsky.app"' in line
    assert b'"langs":["en","ja"]' in line


def test_default_is_posts_only_and_unchanged(tmp_path: Path) -> None:
    """Without --collections the export has no records/ and no `records` in its
    manifest."""
    d = export(BSKY, tmp_path, format="jsonl").directory
    assert d is not None
    assert not (d / "records").exists()
    assert "records" not in json.loads((d / "manifest.json").read_text())


# --- CSV, pinned -------------------------------------------------------------------------

BOM = "\ufeff"
BSKY_CSV = {
    "app.bsky.feed.like": (
        "uri,cid,subject_uri,subject_cid,created_at,via_uri,via_cid\n"
        "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.like/3jt6wh3ckcc2y,"
        "bafyreicr55e6wqk676u4iynvakvg4r7546ndh5kr7qszvcjizrry6l52iy,"
        "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.post/3jt6walwmos2y,"
        "bafyreih2ppgdoc5jhjsbj5yxvqezymbndbe522vexpiic6l72o3ge7tswy,"
        "2023-04-12T17:40:19.955Z,,\n"),
    "app.bsky.feed.repost": (
        "uri,cid,subject_uri,subject_cid,created_at,via_uri,via_cid\n"
        "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.repost/3jtc2jukv7r2o,"
        "bafyreiam4if4wzf7dumd7b4qzqwh66qhxocy4ojj56sw65bfkaqoc2ylzm,"
        "at://did:plc:oky5czdrnfjpqslsw2a5iclo/app.bsky.feed.post/3jtbzyshzva2l,"
        "bafyreigkvkwuxknicv7zrbgojhznwj2d5rpdeovcmhmxtpiv2he4frtjom,"
        "2023-04-13T23:31:27.530Z,,\n"),
    "app.bsky.graph.follow": (
        "uri,cid,subject,created_at,via_uri,via_cid\n"
        "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.graph.follow/3juc5mymmz22b,"
        "bafyreiex52sqfvsarsv6vljv7nrnedgmio5x47vpy4ef2sjznc2gfhbb3m,"
        "did:plc:ewvi7nxzyoun6zhxrhs64oiz,2023-04-26T17:52:05.429Z,,\n"),
    "app.bsky.graph.block": (
        "uri,cid,subject,created_at\n"
        "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.graph.block/3lbdnpc37hl2i,"
        "bafyreihzdqfaj33qt6obnqggmmblstdu2fp6pxjtk6ttiemud3shriec5u,"
        "did:plc:hfqwnpqahea7ga2ktvvpo7sj,2024-11-20T00:06:05.386Z\n"),
    "app.bsky.graph.list": (
        "uri,cid,name,purpose,description,description_facets,avatar,labels,created_at\n"
        "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.graph.list/3kvoyv3rvkw27,"
        "bafyreidzfq4wgml22q75qdplsq2pxh45efbqie36rwhjdglqx55ptjxe3q,"
        "Bluesky's Starter Pack,app.bsky.graph.defs#referencelist,,[],,,"
        "2024-06-24T19:23:08.977Z\n"),
    "app.bsky.graph.listitem": (
        "uri,cid,subject,list,created_at\n"
        "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.graph.listitem/3kvoyv46nxo22,"
        "bafyreia3hxdcsmlyqrrxzvs4m4w6tvaef5gmp3mufxnkijvktn6gtz6c3y,"
        "did:plc:z72i7hdynmk6r22z27h6tvur,"
        "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.graph.list/3kvoyv3rvkw27,"
        "2024-06-24T19:23:09.256Z\n"),
    "app.bsky.feed.generator": (
        "uri,cid,did,display_name,description,description_facets,avatar,"
        "accepts_interactions,labels,content_mode,created_at\n"
        "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.generator/best-of-follows,"
        "bafyreiavvo5cv4uuxfixme2rr3uvqieoemtqhnsso3tyaq7vwp6mqash7i,"
        "did:web:discover.bsky.app,Best of Follows,See top content from people you follow,,"
        "bafkreigk26dzfyeyvpjadajzhdorm4hkj2vaypwtwwgxlt74dscitomfse,,,,"
        "2023-05-26T20:16:14.669Z\n"),
    "app.bsky.feed.threadgate": (
        "uri,cid,post,allow,hidden_replies,created_at\n"
        "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.threadgate/3lbdmuh7axs2u,"
        "bafyreiaxrvoyqf524qasmttkvfukxovku3luic5gwh4mxrlmevwjcw64my,"
        "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.post/3lbdmuh7axs2u,,"
        '"[""at://did:plc:hfqwnpqahea7ga2ktvvpo7sj/app.bsky.feed.post/3lbdnbdx5cs2p"",'
        '""at://did:plc:hfqwnpqahea7ga2ktvvpo7sj/app.bsky.feed.post/3lbdn7gqngs2p"",'
        '""at://did:plc:hfqwnpqahea7ga2ktvvpo7sj/app.bsky.feed.post/3lbdncqh4p22p"",'
        '""at://did:plc:hfqwnpqahea7ga2ktvvpo7sj/app.bsky.feed.post/3lbdndsdzik2p""]",'
        "2024-11-20T00:05:58.843Z\n"),
    "chat.bsky.actor.declaration": (
        "uri,cid,allow_incoming\n"
        "at://did:plc:z72i7hdynmk6r22z27h6tvur/chat.bsky.actor.declaration/self,"
        "bafyreid7e7r3m3aqk3qdooo2s4vm53rr37fdgc5e2f43fvaonhthi3rpfy,none\n"),
}


def test_csv_columns_of_a_real_repository(tmp_path: Path) -> None:
    """The header and first row of each well-known collection's CSV, byte for byte."""
    d = export(BSKY, tmp_path, format="csv", collections="all").directory
    assert d is not None
    for nsid, want in BSKY_CSV.items():
        data = (d / f"records/{nsid}.csv").read_text(encoding="utf-8")
        head = "".join(data.splitlines(keepends=True)[:2])
        assert head == BOM + want, nsid
    assert verify(d).ok


BLOB = cid_for(b"avatar bytes", 0x55)
HAND = {
    "app.bsky.actor.profile/self": {
        "$type": "app.bsky.actor.profile", "displayName": "A, \"quoted\"",
        "description": " leading space", "createdAt": "2024-01-01T00:00:00Z",
        "avatar": {"$type": "blob", "ref": BLOB, "mimeType": "image/png", "size": 12},
        "pinnedPost": {"uri": "at://did:plc:records/app.bsky.feed.post/1", "cid": "bafyp"}},
    "app.bsky.feed.postgate/3kaaaaaaaaaa2": {
        "$type": "app.bsky.feed.postgate", "post": "at://did:plc:records/app.bsky.feed.post/1",
        "createdAt": "2024-01-02T00:00:00Z", "detachedEmbeddingUris": [],
        "embeddingRules": [{"$type": "app.bsky.feed.postgate#disableRule"}]},
    "app.bsky.graph.listblock/3kaaaaaaaaaa2": {
        "$type": "app.bsky.graph.listblock", "subject": "at://did:plc:x/app.bsky.graph.list/1",
        "createdAt": "2024-01-03T00:00:00Z"},
    "app.bsky.graph.starterpack/3kaaaaaaaaaa2": {
        "$type": "app.bsky.graph.starterpack", "name": "pack", "list": "at://x/l/1",
        "feeds": [{"uri": "at://x/f/1"}], "createdAt": "2024-01-04T00:00:00Z"},
    "app.bsky.graph.verification/3kaaaaaaaaaa2": {
        "$type": "app.bsky.graph.verification", "subject": "did:plc:v", "handle": "v.test",
        "displayName": "V", "createdAt": "2024-01-05T00:00:00Z"},
    "app.bsky.labeler.service/self": {
        "$type": "app.bsky.labeler.service", "createdAt": "2024-01-06T00:00:00Z",
        "policies": {"labelValues": ["spam"]}},
    "com.example.thing/k1": {"$type": "com.example.thing", "n": -5, "ok": True,
                             "raw": b"\x00\xff", "link": BLOB},
}
HAND_CSV = {
    "app.bsky.actor.profile": (
        "uri,cid,display_name,description,avatar,banner,labels,joined_via_starter_pack_uri,"
        "joined_via_starter_pack_cid,pinned_post_uri,pinned_post_cid,created_at\n"
        "at://did:plc:records/app.bsky.actor.profile/self,{cid},\"A, \"\"quoted\"\"\","
        "\" leading space\",{blob},,,,,at://did:plc:records/app.bsky.feed.post/1,bafyp,"
        "2024-01-01T00:00:00Z\n"),
    "app.bsky.feed.postgate": (
        "uri,cid,post,detached_embedding_uris,embedding_rules,created_at\n"
        "at://did:plc:records/app.bsky.feed.postgate/3kaaaaaaaaaa2,{cid},"
        "at://did:plc:records/app.bsky.feed.post/1,[],"
        "\"[{\"\"$type\"\":\"\"app.bsky.feed.postgate#disableRule\"\"}]\","
        "2024-01-02T00:00:00Z\n"),
    "app.bsky.graph.listblock": (
        "uri,cid,subject,created_at\n"
        "at://did:plc:records/app.bsky.graph.listblock/3kaaaaaaaaaa2,{cid},"
        "at://did:plc:x/app.bsky.graph.list/1,2024-01-03T00:00:00Z\n"),
    "app.bsky.graph.starterpack": (
        "uri,cid,name,description,description_facets,list,feeds,created_at\n"
        "at://did:plc:records/app.bsky.graph.starterpack/3kaaaaaaaaaa2,{cid},pack,,,"
        "at://x/l/1,\"[{\"\"uri\"\":\"\"at://x/f/1\"\"}]\",2024-01-04T00:00:00Z\n"),
    "app.bsky.graph.verification": (
        "uri,cid,subject,handle,display_name,created_at\n"
        "at://did:plc:records/app.bsky.graph.verification/3kaaaaaaaaaa2,{cid},did:plc:v,"
        "v.test,V,2024-01-05T00:00:00Z\n"),
    "app.bsky.labeler.service": (
        "uri,cid,policies,labels,created_at\n"
        "at://did:plc:records/app.bsky.labeler.service/self,{cid},"
        "\"{\"\"labelValues\"\":[\"\"spam\"\"]}\",,2024-01-06T00:00:00Z\n"),
    "com.example.thing": (
        "uri,cid,json\n"
        "at://did:plc:records/com.example.thing/k1,{cid},"
        "\"{\"\"n\"\":-5,\"\"ok\"\":true,\"\"raw\"\":{\"\"$bytes\"\":\"\"AP8\"\"},"
        "\"\"link\"\":{\"\"$link\"\":\"\"{blob}\"\"},\"\"$type\"\":\"\"com.example.thing\"\"}\"\n"),
}


def test_csv_columns_of_the_other_collections(tmp_path: Path) -> None:
    """Collections the real repositories lack, and one no column set knows (`uri,cid,json`):
    blobs as their CID, strongRefs split, arrays and maps as compact JSON, Go's quoting."""
    car = tmp_path / "h.car"
    write_car(car, DID, HAND)
    d = export(car, tmp_path / "o", format="csv", collections="all").directory
    assert d is not None
    blob = str(cid_from(BLOB))
    for key, rec in HAND.items():
        nsid = key.split("/")[0]
        cid = str(cid_from(cid_for(dag_cbor(rec))))
        want = HAND_CSV[nsid].replace("{cid}", cid).replace("{blob}", blob)
        assert (d / f"records/{nsid}.csv").read_text(encoding="utf-8") == BOM + want, nsid
    assert verify(d).ok


def cid_from(link: Any) -> str:
    from skyexport import _core
    return str(_core.cid_str(bytes(link)))


# --- options -------------------------------------------------------------------------------

def test_named_collections_and_an_absent_one(tmp_path: Path) -> None:
    """A list of NSIDs writes just those; one the repository lacks is an empty file."""
    d = export(BSKY, tmp_path, format="json",
               collections="app.bsky.graph.follow,app.bsky.graph.starterpack").directory
    assert d is not None
    assert sorted(p.name for p in (d / "records").iterdir()) == [
        "app.bsky.graph.follow.json", "app.bsky.graph.starterpack.json"]
    assert (d / "records/app.bsky.graph.starterpack.json").read_bytes() == b"[]\n"
    assert len(json.loads((d / "records/app.bsky.graph.follow.json").read_bytes())) == 2
    assert verify(d).ok


def test_collections_refused_without_a_car_or_with_a_bad_nsid(tmp_path: Path,
                                                              bsky_archive: Path) -> None:
    with pytest.raises(OptionError, match="needs a repository CAR"):
        export(bsky_archive, tmp_path, collections="all")
    with pytest.raises(OptionError, match="not an NSID"):
        export(BSKY, tmp_path, collections="app.bsky/feed")
    r = run("export", BSKY, "-o", tmp_path, "--collections", "nope")
    assert r.returncode == 2 or r.returncode == 1
    assert "not an NSID" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture
def bsky_archive(tmp_path: Path) -> Path:
    from skyexport.sources.car.importer import import_car
    a = tmp_path / "a.db"
    import_car(BSKY, a)
    return a


# --- strictness ----------------------------------------------------------------------------

def _like(i: int) -> dict[str, Any]:
    return {"$type": "app.bsky.feed.like", "createdAt": "2024-01-01T00:00:00Z",
            "subject": {"uri": f"at://did:plc:x/app.bsky.feed.post/{i}", "cid": "bafy"}}


def _car_with_like_block(tmp_path: Path, bad: bytes, *, damaged: bool = False) -> Path:
    """Three likes; the middle one's block is `bad` (with its CID, or, if damaged, under
    the CID of another record)."""
    c = Car()
    good = [c.add(_like(i)) for i in (0, 2)]
    if damaged:
        mid = cid_for(dag_cbor(_like(1)))
        c.add_raw(mid, bad)
    else:
        mid = c.add(bad)
    keys = ["app.bsky.feed.like/3kaaaaaaaaaa2", "app.bsky.feed.like/3kaaaaaaaaab2",
            "app.bsky.feed.like/3kaaaaaaaaac2"]
    root = c.node([(keys[0], good[0], None), (keys[1], mid, None), (keys[2], good[1], None)],
                  compress=True)
    return write(tmp_path / "l.car", c.finish(root, did=DID))


FLOAT_RECORD = b"\xa2\x61x\xfb" + bytes(8) + b"\x65$type\x72app.bsky.feed.like"


@pytest.mark.parametrize("bad,what", [
    (FLOAT_RECORD, "not DAG-CBOR|float"),
    (b"\xa2\x61a\x01\x61a\x02", "repeated or out of"),       # a key twice
    (b"\xa2\x61b\x01\x61a\x02", "repeated or out of"),       # keys out of order
    (b"\xa1\x61a\x18\x01", "shortest|minimal"),              # 1 in two bytes
    (b"\xa1\x61a\x1b" + b"\xff" * 8, "64-bit"),              # 2^64 - 1
    (b"\xa1\x61a\xc1\x01", "tag"),                            # tag 1
    (b"\xa1\x65$type\x60", "\\$type"),                        # empty $type
    (b"\x83\x01\x02\x03", "not a map"),                       # a record is a map
    (b"\xa1\x61a\xd8\x2a\x43\x00\x01\x02", "not a CID"),       # a link that is no CID
    (b"\xa1\x61a\x9f\xff", "indefinite"),                       # an indefinite array
    (b"\xa1\x61a\x62\xff\xfe", "UTF-8"),                        # invalid UTF-8
    (b"\xa1\x61a\xf7", "undefined"),                             # undefined
    (b"\xa2\x61a\x01\x65$type\x64blob", "blob without"),         # a blob with no ref
])
def test_a_bad_record_stops_or_is_kept_out(tmp_path: Path, bad: bytes, what: str) -> None:
    """A like that is not valid atproto data stops the export with one line naming its
    CID and key; with on_bad_value keep it is left out, listed in the warnings, and the
    other records are exported."""
    car = _car_with_like_block(tmp_path, bad)
    with pytest.raises(ArchiveError, match=what) as err:
        export(car, tmp_path / "o", format="jsonl", collections="all")
    assert "app.bsky.feed.like/3kaaaaaaaaab2" in str(err.value)
    assert str(cid_from(cid_for(bad))) in str(err.value)
    assert not list((tmp_path / "o").glob("*/records"))
    res = export(car, tmp_path / "k", format="jsonl", collections="all", on_bad_value="keep")
    d = res.directory
    assert d is not None
    lines = (d / "records/app.bsky.feed.like.jsonl").read_bytes().splitlines()
    assert [json.loads(x)["uri"].rsplit("/", 1)[1] for x in lines] == [
        "3kaaaaaaaaaa2", "3kaaaaaaaaac2"]
    assert records_of(d, "jsonl")["records/app.bsky.feed.like.jsonl"]["records"] == 2
    (w,) = res.warnings
    assert w.uri == f"at://{DID}/app.bsky.feed.like/3kaaaaaaaaab2" and w.column == "record"
    assert str(cid_from(cid_for(bad))) in w.message
    m = json.loads((d / "manifest.json").read_text())
    assert m["warnings_total"] == 1
    assert verify(d).ok


def test_likes_are_cid_checked_when_read(tmp_path: Path) -> None:
    """A like whose bytes do not match its CID: posts-only exports never read it; with
    --collections it stops the export, even with keep (the file is damaged)."""
    car = _car_with_like_block(tmp_path, dag_cbor(_like(9)), damaged=True)
    assert export(car, tmp_path / "p", format="jsonl").post_count == 0
    for policy in ("error", "keep"):
        with pytest.raises(ArchiveError, match="does not match its CID"):
            export(car, tmp_path / policy, format="jsonl", collections="all",
                   on_bad_value=policy)  # type: ignore[arg-type]


# --- many records: batches, errors far into the walk ---------------------------------------

MANY = 12_000      # likes: several of RecordTap's 1 MiB output chunks
BAD_AT = 6_000     # far into the walk


def _many_likes_car(tmp_path: Path, bad: bytes | None, *, missing_post: bool = False,
                    at_bad: str = "block") -> Path:
    """MANY likes in one MST node, the one at BAD_AT with block `bad` (if given; with
    `at_bad` "damaged": `bad` under the CID of the like it replaces, "missing": no block),
    and, with `missing_post`, a post after them whose block is not in the CAR."""
    c = Car()
    entries: list[tuple[str, Any, Any]] = []
    for i in range(MANY):
        if bad is not None and i == BAD_AT:
            if at_bad == "block":
                cid = c.add(bad)
            else:
                cid = cid_for(dag_cbor(_like(i)))
                if at_bad == "damaged":
                    c.add_raw(cid, bad)
        else:
            cid = c.add(_like(i))
        entries.append((f"app.bsky.feed.like/3k{i:08d}", cid, None))
    if missing_post:
        absent = cid_for(dag_cbor({"$type": "app.bsky.feed.post", "text": "absent",
                                   "createdAt": "2024-01-01T00:00:00Z"}))
        entries.append(("app.bsky.feed.post/3kzzzzzzzzzz2", absent, None))
    return write(tmp_path / "many.car", c.finish(c.node(entries, compress=True), did=DID))


def test_records_of_many_batches_equal_an_independent_reader(tmp_path: Path) -> None:
    """A synthetic repository of 9,600 records (several output chunks per file, blocks
    stored twice): every record of every collection, in key order, equals atmst + cbrrr's
    decoding; the json and csv files of the same export hold as many records, and verify
    passes."""
    car = tmp_path / "s.car"
    synth_car(car, 3000, seed=3)
    d = export(car, tmp_path / "l", format="jsonl", collections="all").directory
    assert d is not None
    listed = records_of(d, "jsonl")
    ours = []
    for name in sorted(listed):
        lines = (d / name).read_bytes().splitlines()
        assert len(lines) == listed[name]["records"]
        ours += [(o["uri"], o["cid"], o["value"])
                 for o in (dict(json.loads(x, object_pairs_hook=_hook)) for x in lines)]
    assert ours == reference(car)
    assert len(ours) == 3000 + 6000 + 600
    for fmt in ("json", "csv"):
        other = export(car, tmp_path / fmt, format=fmt, collections="all").directory
        assert other is not None
        assert {n.rsplit(".", 1)[0]: v["records"] for n, v in records_of(other, fmt).items()} \
            == {n.rsplit(".", 1)[0]: v["records"] for n, v in listed.items()}
        assert verify(other).ok
    assert verify(d).ok


def test_a_bad_record_in_a_later_batch_stops_or_is_kept_out(tmp_path: Path) -> None:
    """A bad like far into the walk stops the export with the one line naming it; with
    keep, exactly it is left out, the others in order."""
    car = _many_likes_car(tmp_path, FLOAT_RECORD)
    with pytest.raises(ArchiveError, match="float") as err:
        export(car, tmp_path / "o", format="jsonl", collections="all")
    assert f"app.bsky.feed.like/3k{BAD_AT:08d}" in str(err.value)
    assert str(cid_from(cid_for(FLOAT_RECORD))) in str(err.value)
    assert not list((tmp_path / "o").glob("*/records"))
    res = export(car, tmp_path / "k", format="jsonl", collections="all", on_bad_value="keep")
    assert res.directory is not None
    lines = (res.directory / "records/app.bsky.feed.like.jsonl").read_bytes().splitlines()
    assert [json.loads(x)["uri"].rsplit("/", 1)[1] for x in lines] == [
        f"3k{i:08d}" for i in range(MANY) if i != BAD_AT]
    (w,) = res.warnings
    assert w.uri == f"at://{DID}/app.bsky.feed.like/3k{BAD_AT:08d}"


def test_the_first_error_in_key_order_is_the_one_reported(tmp_path: Path) -> None:
    """A bad like, then a missing post after it: the like's error is reported, as a reader
    going key by key reports it; with keep, the like is left out and the missing post stops
    the export."""
    car = _many_likes_car(tmp_path, FLOAT_RECORD, missing_post=True)
    with pytest.raises(ArchiveError, match="float") as err:
        export(car, tmp_path / "o", format="jsonl", collections="all")
    assert f"app.bsky.feed.like/3k{BAD_AT:08d}" in str(err.value)
    with pytest.raises(ArchiveError, match="is missing") as err:
        export(car, tmp_path / "k", format="jsonl", collections="all", on_bad_value="keep")
    assert "app.bsky.feed.post/3kzzzzzzzzzz2" in str(err.value)


@pytest.mark.parametrize("at_bad,what", [("damaged", "does not match its CID"),
                                         ("missing", "is missing")])
def test_a_like_far_into_the_walk_is_checked(tmp_path: Path, at_bad: str,
                                             what: str) -> None:
    """A like far into the walk whose block is damaged or missing stops the export with
    the walk's one line naming it, with either policy (the file is damaged)."""
    car = _many_likes_car(tmp_path, b"\xa0", at_bad=at_bad)
    for policy in ("error", "keep"):
        with pytest.raises(ArchiveError, match=what) as err:
            export(car, tmp_path / policy, format="jsonl", collections="all",
                   on_bad_value=policy)  # type: ignore[arg-type]
        assert f"app.bsky.feed.like/3k{BAD_AT:08d}" in str(err.value)
        assert str(cid_from(cid_for(dag_cbor(_like(BAD_AT))))) in str(err.value)


def test_likes_with_several_copies(tmp_path: Path) -> None:
    """Blocks stored twice, and a like whose first copy is damaged and second good: each
    like is exported once, from a copy that matches its CID."""
    c = Car()
    entries: list[tuple[str, Any, Any]] = []
    for i in range(MANY):
        data = dag_cbor(_like(i))
        cid = cid_for(data)
        if i == BAD_AT:
            c.add_raw(cid, dag_cbor(_like(-1)))   # a damaged copy first
        c.add_raw(cid, data)
        if i % 50 == 0:
            c.add_raw(cid, data)
        entries.append((f"app.bsky.feed.like/3k{i:08d}", cid, None))
    car = write(tmp_path / "dups.car", c.finish(c.node(entries, compress=True), did=DID))
    d = export(car, tmp_path / "o", format="jsonl", collections="all").directory
    assert d is not None
    lines = (d / "records/app.bsky.feed.like.jsonl").read_bytes().splitlines()
    assert [json.loads(x)["value"] for x in lines] == [_like(i) for i in range(MANY)]


def test_a_records_write_failure(tmp_path: Path) -> None:
    """Writing records/app.bsky.feed.like.jsonl fails (a real RLIMIT_FSIZE of 1 MiB; the
    file would be about 2.5 MB): one line, exit status 1, nothing published."""
    car = _many_likes_car(tmp_path, None)
    out = tmp_path / "out"
    proc = run("export", car, "-o", out, "--format", "jsonl", "--collections", "all",
               preexec_fn=child_setup(fsize=1 << 20))
    assert_failed(proc, 1, "file size limit", "records")
    assert not list(out.glob("*/records")) and not list(out.glob("*/manifest.json"))


# --- verify --------------------------------------------------------------------------------

def test_verify_checks_each_records_file(tmp_path: Path) -> None:
    d = export(BSKY, tmp_path, format="jsonl", collections="all").directory
    assert d is not None
    f = d / "records/app.bsky.graph.follow.jsonl"
    data = f.read_bytes()
    f.write_bytes(data[:-1])
    report = verify(d)
    assert not report.ok
    assert any("app.bsky.graph.follow.jsonl" in p for p in report.problems)
    f.write_bytes(data)
    assert verify(d).ok
    (d / "records/extra.jsonl").write_bytes(b"")
    assert any("extra.jsonl" in p for p in verify(d).problems)
    (d / "records/extra.jsonl").unlink()
    m = json.loads((d / "manifest.json").read_text())
    m["records"]["records/app.bsky.graph.follow.jsonl"]["records"] = 3
    (d / "manifest.json").write_text(json.dumps(m))
    assert any("holds 2 records" in p for p in verify(d).problems)


# --- a CAR as the input ------------------------------------------------------------------

def test_import_progress_and_the_help_texts(tmp_path: Path) -> None:
    """import --progress jsonl reports the CAR's blocks and bytes, the last line at the
    whole file; export's help and the no-archive message say a CAR is accepted."""
    r = run("import", BSKY, "--archive", tmp_path / "a.db", "--progress", "jsonl")
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stderr.splitlines()[-1])
    assert last == {"status": "running", "blocks": 768, "bytes": BSKY.stat().st_size,
                    "total_bytes": BSKY.stat().st_size}
    r = run("import", BSKY, "--archive", tmp_path / "b.db", "--progress", "none")
    assert r.returncode == 0 and r.stderr == ""
    r = run("export", "--help")
    assert "repo.car" in r.stdout and "--collections" in r.stdout
    r = run("export", tmp_path / "missing.db", "-o", tmp_path)
    assert r.returncode == 1 and "repo.car" in r.stderr


# --- the walk's read-ahead -------------------------------------------------------------------

def test_the_walk_reading_ahead_keeps_the_error_order(tmp_path: Path) -> None:
    """The walk reads keys ahead of the records it encodes (another thread reads their
    blocks meanwhile): here it meets a missing MST node a few keys after a bad like,
    before the like is encoded.  The like's error is still the one reported, as a reader
    going key by key reports it; with keep, the like is left out and the missing node
    stops the export."""
    c = Car()
    missing = cid_for(dag_cbor({"l": None, "e": []}))
    bad_at = MANY - 10
    entries: list[tuple[str, Any, Any]] = []
    for i in range(MANY):
        cid = c.add(FLOAT_RECORD if i == bad_at else _like(i))
        entries.append((f"app.bsky.feed.like/3k{i:08d}", cid,
                        missing if i == MANY - 1 else None))
    car = write(tmp_path / "ahead.car", c.finish(c.node(entries, compress=True), did=DID))
    with pytest.raises(ArchiveError, match="float") as err:
        export(car, tmp_path / "o", format="jsonl", collections="all")
    assert f"app.bsky.feed.like/3k{bad_at:08d}" in str(err.value)
    with pytest.raises(ArchiveError, match="is missing") as err:
        export(car, tmp_path / "k", format="jsonl", collections="all", on_bad_value="keep")
    assert str(cid_from(missing)) in str(err.value)
    assert f"MST node after key app.bsky.feed.like/3k{MANY - 1:08d}" in str(err.value)


def _ahead_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name == "skyexport-car-ahead"]


def test_the_read_ahead_thread_ends_with_the_walk(tmp_path: Path) -> None:
    """The thread reading records ahead of the walk runs while posts are read, and is
    gone (waited for) once the walk is closed: after the last row, after a consumer
    stopping early, and after the walk failed at a bad record."""
    from skyexport.sources.car.repo import CarRepo

    car = tmp_path / "s.car"
    synth_car(car, 3000, seed=3)
    with CarRepo(car, tmp_path) as repo:
        rows = repo.post_rows("x")
        next(rows)
        assert _ahead_threads() == ["skyexport-car-ahead"]
        rows.close()                                  # a consumer stopping early
        assert _ahead_threads() == []
        assert sum(1 for _ in repo.post_rows("x")) == 3000
        assert _ahead_threads() == []
    bad = _many_likes_car(tmp_path, FLOAT_RECORD)
    with pytest.raises(ArchiveError, match="float"):
        export(bad, tmp_path / "o", format="jsonl", collections="all")
    assert _ahead_threads() == []
