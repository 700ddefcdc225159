"""The command line's manners: every case runs the installed command in a
subprocess on a real archive."""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import skyexport
from skyexport.testing.synth import build_archive

from helpers.cli import run as cli

COMMANDS = ("export", "verify", "synth", "demo", "info", "completion")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "archive.db"
    build_archive(path, 3000, seed=5, dids=7, media=True)
    return path


def dids_of(archive: Path) -> list[tuple[str, int, str, str]]:
    con = sqlite3.connect(archive)
    try:
        return con.execute("SELECT did, count(*), min(created_at), max(created_at) FROM posts "
                           "GROUP BY did ORDER BY count(*) DESC, did").fetchall()
    finally:
        con.close()


# --- info --------------------------------------------------------------------------------

def test_info_json(archive: Path) -> None:
    proc = cli("info", archive, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    con = sqlite3.connect(archive)
    (posts, lo, hi), = con.execute("SELECT count(*), min(created_at), max(created_at) "
                                   "FROM posts").fetchall()
    (media,), = con.execute("SELECT count(*) FROM media").fetchall()
    (mode,), = con.execute("PRAGMA journal_mode").fetchall()
    con.close()
    assert info["posts"] == posts == 3000
    assert (info["first_created_at"], info["last_created_at"]) == (lo, hi)
    assert info["media_rows"] == media > 0
    assert info["schema_version"] == 2 and info["journal_mode"] == mode
    assert info["size_bytes"] == archive.stat().st_size
    assert [(d["did"], d["posts"], d["first_created_at"], d["last_created_at"])
            for d in info["dids"]] == dids_of(archive)


def test_info_text(archive: Path) -> None:
    proc = cli("info", archive)
    assert proc.returncode == 0, proc.stderr
    assert "posts: 3000" in proc.stdout and "DIDs: 7" in proc.stdout
    for did, n, _lo, _hi in dids_of(archive):
        assert any(did in line and f"{n} posts" in line for line in proc.stdout.splitlines())


def test_info_bad_archive(tmp_path: Path) -> None:
    (tmp_path / "x.db").write_bytes(b"not sqlite at all" * 100)
    proc = cli("info", tmp_path / "x.db")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "x.db" in proc.stderr


# --- --did that matches nothing, dates that match nothing, repeated options -----------------

def test_unknown_did_lists_the_dids(archive: Path, tmp_path: Path) -> None:
    proc = cli("export", archive, "-o", tmp_path / "out", "--did", "did:plc:typo")
    assert proc.returncode == 1 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    held = dids_of(archive)
    for did, n, _lo, _hi in held[:5]:
        assert f"{did} ({n} posts)" in line
    assert held[5][0] not in line and ", ..." in line
    assert "did:plc:typo" in line and "skyexport info" in line
    assert not (tmp_path / "out").exists()
    with pytest.raises(skyexport.SelectionError):
        skyexport.export(archive, tmp_path / "out", did="")


def test_dates_matching_nothing_export_empty_and_say_so(archive: Path, tmp_path: Path) -> None:
    proc = cli("export", archive, "-o", tmp_path / "out", "--since", "2099-01-01", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "no post was created in the range" in proc.stderr
    (directory,) = proc.stdout.splitlines()
    assert Path(directory, "posts.json").read_bytes() == b"[]\n"


@pytest.mark.parametrize("option", ["--did", "--since", "--until"])
def test_repeated_filter_is_a_usage_error(archive: Path, tmp_path: Path, option: str) -> None:
    proc = cli("export", archive, "-o", tmp_path / "out", option, "2024-01-01", option,
               "2024-02-01")
    assert proc.returncode == 2
    usage, line = proc.stderr.splitlines()
    assert usage.startswith("usage: skyexport export")
    assert f"{option} given twice" in line
    assert not (tmp_path / "out").exists()


# --- manners -----------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "wanted"), [
    (["export", "--sinse", "2024-01-01"], "--since"),
    (["export", "--formt", "csv"], "--format"),
    (["synth", "x.db", "--posts", "5", "--sed", "1"], "--seed"),
    (["export", "--med"], "--media"),
    (["demo", "--kep"], "--keep"),
])
def test_typo_gets_its_subcommand_usage_and_a_suggestion(tmp_path: Path, args: list[str],
                                                         wanted: str) -> None:
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    usage, line = proc.stderr.splitlines()
    assert usage.startswith(f"usage: skyexport {args[0]} ")
    assert line.endswith(f"(did you mean {wanted}?)"), line
    assert list(tmp_path.iterdir()) == []


def test_version() -> None:
    for flag in ("-V", "--version"):
        proc = cli(flag)
        assert proc.returncode == 0 and proc.stdout == f"skyexport {skyexport.__version__}\n"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_describes_every_option_and_has_examples(command: str) -> None:
    proc = cli(command, "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    parser = __import__("skyexport.cli.commands", fromlist=["build_parser"]).build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for action in sub.choices[command]._actions:
        assert action.help, f"{command}: {action.option_strings or action.dest} has no help"
    examples = text.split("examples:\n", 1)[1].splitlines()
    assert len([x for x in examples if x.startswith("  skyexport ") or "skyexport" in x]) >= 2


def test_quiet_prints_only_the_directory(archive: Path, tmp_path: Path) -> None:
    proc = cli("export", archive, "-o", tmp_path / "out", "-q")
    assert proc.returncode == 0 and proc.stderr == ""
    (line,) = proc.stdout.splitlines()
    assert Path(line).parent == tmp_path / "out" and skyexport.verify(line).ok


def test_verbose_adds_detail(archive: Path, tmp_path: Path) -> None:
    plain = cli("export", archive, "-o", tmp_path / "a", "--progress", "none")
    loud = cli("export", archive, "-o", tmp_path / "b", "-v", "--since", "2024-01-01",
               "--progress", "none")
    assert plain.returncode == loud.returncode == 0
    assert len(loud.stdout.splitlines()) > len(plain.stdout.splitlines())
    assert "filters: --since 2024-01-01" in loud.stdout and "posts/s" in loud.stdout
    assert cli("export", archive, "-q", "-v").returncode == 2


# --- the Python API's options ------------------------------------------------------------

def test_api_errors_name_keyword_arguments(archive: Path, tmp_path: Path) -> None:
    for kwargs, needle in [({"since": "soon"}, "since= "), ({"until": "2024-13-01"}, "until= "),
                           ({"since": 20240101}, "since= must be a str, datetime.date"),
                           ({"since": "2024-03-01", "until": "2024-01-01"},
                            "since= 2024-03-01 is after until= 2024-01-01"),
                           ({"batch_size": 0}, "batch_size= "),
                           ({"media": True, "media_root": tmp_path / "no"}, "media_root= ")]:
        with pytest.raises(skyexport.OptionError) as info:
            skyexport.export(archive, tmp_path / "out", **kwargs)  # type: ignore[arg-type]
        assert needle in str(info.value) and "--" not in str(info.value), info.value
    assert not (tmp_path / "out").exists()


def test_api_accepts_dates(archive: Path, tmp_path: Path) -> None:
    by_text = skyexport.export(archive, tmp_path / "t", since="2024-01-01",
                               until="2024-06-30T12:00:00Z")
    by_date = skyexport.export(archive, tmp_path / "d", since=dt.date(2024, 1, 1),
                               until=dt.datetime(2024, 6, 30, 12, 0))
    aware = skyexport.export(archive, tmp_path / "a", since=dt.date(2024, 1, 1),
                             until=dt.datetime(2024, 6, 30, 14, 0, tzinfo=dt.timezone(
                                 dt.timedelta(hours=2))))
    assert by_text.post_count > 0
    assert by_text.data_file.read_bytes() == by_date.data_file.read_bytes() \
        == aware.data_file.read_bytes()


# --- completion --------------------------------------------------------------------------

def _complete(shell_cmd: list[str], script: str, words: list[str]) -> list[str]:
    """What the generated function offers for the command line `words` (the last being
    completed), set up as each shell's completion system sets it up."""
    quoted = " ".join(repr(w) for w in words)
    if shell_cmd[0] == "bash":
        setup = f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}"
    else:
        setup = f"words=({quoted}); CURRENT={len(words)}"
    body = f"{script}\n{setup}; _skyexport; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    proc = subprocess.run([*shell_cmd, body], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    offered = proc.stdout.split()
    # zsh's compgen (bashcompinit) offers every candidate and leaves matching the word
    # being completed to compadd, as zsh does: match it here the same way.
    return [w for w in offered if w.startswith(words[-1])]


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion(shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    proc = cli("completion", shell)
    assert proc.returncode == 0
    run = ["bash", "-c"] if shell == "bash" else ["zsh", "-f", "-c"]
    assert _complete(run, proc.stdout, ["skyexport", "ex"]) == ["export"]
    assert _complete(run, proc.stdout, ["skyexport", "export", "--sin"]) == ["--since"]
    assert _complete(run, proc.stdout, ["skyexport", "export", "-f", ""]) == \
        ["json", "csv", "jsonl"]
    assert "--media-any-path" in _complete(run, proc.stdout, ["skyexport", "export", "--me"])


def test_an_export_imports_only_what_it_uses(tmp_path: Path) -> None:
    """Start-up is part of every export (perf/bench.py's start-up check): a plain
    export in a fresh interpreter never imports what only other paths need - argparse's
    translation lookup (locale, gettext's .mo search), datetime (the API's date objects),
    array (verify's name set), msgspec (CSV's rare embeds), shutil (failure paths),
    typing - and the parser's strings are argparse's own."""
    db = tmp_path / "a.db"
    build_archive(db, posts=50, seed=1)
    code = (
        "import sys, os\n"
        "from skyexport.cli.commands import main\n"
        f"rc = main(['export', {str(db)!r}, '-o', {str(tmp_path / 'out')!r}, "
        "'--progress', 'none', '-q'])\n"
        "bad = sorted(m for m in ('locale', 'datetime', 'array', 'msgspec', 'shutil', "
        "'typing') if m in sys.modules)\n"
        "print(rc, bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stdout + out.stderr
    from skyexport.cli.commands import build_parser

    help_text = build_parser().format_help()
    assert "options:" in help_text and "positional arguments:" in help_text


# --- closed standard streams -----------------------------------------------------------------

def _closed(fd: int, *args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The command with descriptor `fd` really closed (as `>&-` or `2>&-` closes it); the
    other of stdout/stderr captured."""
    return subprocess.run([sys.executable, "-m", "skyexport", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=cwd,
                          preexec_fn=lambda: os.close(fd), check=False)


@pytest.fixture(scope="module")
def streams(tmp_path_factory: pytest.TempPathFactory, archive: Path) -> dict[str, Path]:
    """An export to verify and a repository CAR to import."""
    from skyexport.testing.carwrite import synth_car

    base = tmp_path_factory.mktemp("streams")
    done = skyexport.export(archive, base / "exports", format="csv")
    assert done.directory is not None
    synth_car(base / "repo.car", 40, seed=2)
    return {"export": done.directory, "car": base / "repo.car"}


@pytest.mark.parametrize("command", ["info", "completion", "demo", "export -o -"])
def test_closed_stdout_fails_what_prints_its_result(archive: Path, tmp_path: Path,
                                                    command: str) -> None:
    """A command whose result is what it prints cannot deliver it: exit 1 and one line,
    before doing anything."""
    args = {"info": ["info", archive], "completion": ["completion", "bash"],
            "demo": ["demo", "--posts", "100", "--output", tmp_path / "demo"],
            "export -o -": ["export", archive, "-o", "-"]}[command]
    proc = _closed(1, *args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("skyexport: error: stdout is closed, and `skyexport "), line
    assert list(tmp_path.iterdir()) == []


def test_closed_stdout_does_not_fail_what_makes_files(archive: Path, tmp_path: Path,
                                                      streams: dict[str, Path]) -> None:
    """export to a directory, import, synth and verify deliver a file or an exit status:
    with stdout closed they do their work and exit as they would."""
    proc = _closed(1, "export", archive, "-o", tmp_path / "out", "-f", "jsonl", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")
    (made,) = (tmp_path / "out").iterdir()
    assert skyexport.verify(made).ok
    proc = _closed(1, "import", streams["car"], "--archive", tmp_path / "imported.db",
                   cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert (tmp_path / "imported.db").is_file()
    proc = _closed(1, "synth", tmp_path / "synth.db", "--posts", "20", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert (tmp_path / "synth.db").is_file()
    proc = _closed(1, "verify", streams["export"], cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")
    proc = _closed(1, "verify", tmp_path / "out", cwd=tmp_path)  # not an export: fails
    assert proc.returncode == 1 and "problem(s) found" in proc.stderr.splitlines()[-1]


@pytest.mark.parametrize("command", ["export", "export -o -", "import", "verify", "info",
                                     "completion", "synth", "demo"])
def test_closed_stderr_never_fails_a_success(archive: Path, tmp_path: Path,
                                             streams: dict[str, Path], command: str) -> None:
    """With stderr closed every command still succeeds and prints its result on stdout;
    progress and notes go nowhere."""
    args: list[object] = {
        "export": ["export", archive, "-o", tmp_path / "out", "--progress", "jsonl",
                   "--since", "2100-01-01"],  # an empty range: a note on stderr too
        "export -o -": ["export", archive, "-o", "-", "-f", "jsonl", "--progress", "bar"],
        "import": ["import", streams["car"], "--archive", tmp_path / "imported.db"],
        "verify": ["verify", streams["export"]],
        "info": ["info", archive],
        "completion": ["completion", "bash"],
        "synth": ["synth", tmp_path / "synth.db", "--posts", "20"],
        "demo": ["demo", "--posts", "200", "--progress", "jsonl"],
    }[command]
    proc = _closed(2, *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout
    out = proc.stdout
    if command == "export":
        assert skyexport.verify(out.splitlines()[-1]).ok
    elif command == "export -o -":
        assert len(out.splitlines()) == 3000
    elif command == "import":
        assert out.splitlines()[-1] == str(tmp_path / "imported.db")
    elif command == "verify":
        assert out.startswith("ok: ")
    elif command == "info":
        assert "posts: 3000" in out
    elif command == "completion":
        assert "complete -o filenames -F _skyexport skyexport" in out
    elif command == "synth":
        assert out.splitlines()[-1] == str(tmp_path / "synth.db")
    else:
        assert "peak memory (RSS)" in out and out.splitlines()[-1].startswith("removed ")


# --- options that must not be ignored ---------------------------------------------------------

def test_explicit_progress_holds_with_quiet(archive: Path, tmp_path: Path) -> None:
    """-q means no progress by default; an explicit --progress still holds, and -q keeps
    stdout to the directory alone."""
    proc = cli("export", archive, "-o", tmp_path / "out", "--progress", "jsonl", "-q")
    assert proc.returncode == 0, proc.stderr
    (directory,) = proc.stdout.splitlines()
    assert skyexport.verify(directory).ok
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    assert events[0]["status"] == "queued" and events[-1]["status"] == "completed"
    assert events[-1]["posts_processed"] == 3000
    quiet = cli("export", archive, "-o", tmp_path / "out", "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_usage_errors_look_alike(archive: Path, tmp_path: Path) -> None:
    """A usage error found by the parser (a bad choice) and one found by skyexport's own
    checks (the dates the wrong way round) print the same usage line and prefix."""
    parser_found = cli("export", archive, "-o", tmp_path, "--format", "xml")
    own_check = cli("export", archive, "-o", tmp_path, "--since", "2024-02-01", "--until",
                    "2024-01-01")
    assert parser_found.returncode == own_check.returncode == 2
    usage_a, line_a = parser_found.stderr.splitlines()
    usage_b, line_b = own_check.stderr.splitlines()
    assert usage_a == usage_b and usage_a.startswith("usage: skyexport export [-h] ")
    assert line_a.startswith("skyexport export: error: argument --format/-f: invalid ")
    assert line_b == ("skyexport export: error: --since 2024-02-01 is after --until "
                      "2024-01-01")
    synth = cli("synth", tmp_path / "s.db")  # neither --posts nor --car: skyexport's check
    usage, line = synth.stderr.splitlines()
    assert synth.returncode == 2 and usage.startswith("usage: skyexport synth [-h] ")
    assert line.startswith("skyexport synth: error: give exactly one of --posts N")


def test_bash_completion_offers_file_names_whole(tmp_path: Path) -> None:
    """Real bash, the generated script sourced, the function called as bash calls it: a
    file name with a space is one candidate, and glob characters in names are not
    expanded (`a*b.db` is offered once, as itself, not as every match of a pattern).
    `complete -o filenames` then quotes the candidate as it is inserted (`my\\ repo.car`)."""
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    for name in ("my repo.car", "a*b.db", "axb.db", "a?c.db"):
        (tmp_path / name).write_bytes(b"")
    script = cli("completion", "bash").stdout
    assert "complete -o filenames -F _skyexport skyexport" in script

    def offered(word: str) -> list[str]:
        body = (f"{script}\nCOMP_WORDS=(skyexport info {shlex.quote(word)}); COMP_CWORD=2; "
                "_skyexport; printf '%s\\0' \"${COMPREPLY[@]}\"")
        done = subprocess.run(["bash", "--norc", "--noprofile", "-c", body], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return sorted(done.stdout.split("\0")[:-1])

    assert offered("my") == ["my repo.car"]
    assert offered("a") == ["a*b.db", "a?c.db", "axb.db"]
    assert offered("a*") == ["a*b.db"]
    assert offered("") == ["a*b.db", "a?c.db", "axb.db", "my repo.car"]


@pytest.mark.parametrize("command", ["info --json", "completion bash", "verify"])
def test_a_full_stdout_is_one_line(archive: Path, tmp_path: Path, streams: dict[str, Path],
                                   command: str) -> None:
    """stdout on a full device (`/dev/full`): whether the write fails mid-command (a result
    longer than the stream's buffer) or at the final flush, the command exits 1 with one
    line that names stdout, never an "unexpected" error."""
    args = {"info --json": ["info", archive, "--json"],
            "completion bash": ["completion", "bash"],
            "verify": ["verify", streams["export"]]}[command]
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "skyexport", *map(str, args)],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120,
                              cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("skyexport: error: writing to stdout failed: No space left"), line
