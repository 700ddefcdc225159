"""Shell completion scripts (`skyexport completion bash|zsh`), generated from the parser
itself, so they never drift from the options: subcommands, each one's options, the
choices of options that have them, and file names elsewhere (each offered whole, never
split at a space or glob-expanded; the shell quotes it as it inserts it).  zsh uses the
same function through its bashcompinit layer."""

from __future__ import annotations

import argparse
import sys

from .render import EXIT_OK


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _bash_function(parser: argparse.ArgumentParser) -> str:
    subs = _subcommands(parser)
    cases = []
    for name, sub in subs.items():
        options, choices = [], []
        for action in sub._actions:
            options += [o for o in action.option_strings if o.startswith("--")]
            if action.choices and action.option_strings:
                words = " ".join(str(c) for c in action.choices)
                pattern = "|".join(action.option_strings)
                choices.append(f'            {pattern}) COMPREPLY=($(compgen -W "{words}" '
                               f'-- "$cur")); return;;')
        choice_case = ("        case \"$prev\" in\n" + "\n".join(choices)
                       + "\n        esac\n") if choices else ""
        cases.append(f"    {name})\n{choice_case}"
                     f'        if [[ "$cur" == -* ]]; then\n'
                     f'            COMPREPLY=($(compgen -W "{" ".join(sorted(set(options)))}"'
                     f' -- "$cur"))\n'
                     f"        else\n"
                     f"            _skyexport_files\n"
                     f"        fi;;")
    return (
        # File names one a line, each one word whatever it holds (a space, `*`, `?`):
        # never split or glob-expanded; `complete -o filenames` quotes them as inserted.
        "_skyexport_files() {\n"
        "    local name\n"
        "    COMPREPLY=()\n"
        '    while IFS= read -r name; do COMPREPLY+=("$name"); done < <(compgen -f -- "$cur")\n'
        "}\n"
        "_skyexport() {\n"
        "    local cur prev sub cword\n"
        "    if [[ -n $ZSH_VERSION ]]; then  # zsh, through bashcompinit: its own 1-based words\n"
        '        cur="${words[CURRENT]}"; prev="${words[CURRENT-1]}"; sub="${words[2]}"\n'
        "        cword=$((CURRENT - 1))\n"
        "    else\n"
        '        cur="${COMP_WORDS[COMP_CWORD]}"; prev="${COMP_WORDS[COMP_CWORD-1]}"\n'
        '        sub="${COMP_WORDS[1]}"; cword=$COMP_CWORD\n'
        "    fi\n"
        "    if [[ $cword -eq 1 ]]; then\n"
        f'        COMPREPLY=($(compgen -W "{" ".join(subs)} --help --version" -- "$cur"))\n'
        "        return\n"
        "    fi\n"
        '    case "$sub" in\n'
        + "\n".join(cases) + "\n"
        "    esac\n"
        "}\n"
    )


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for `shell` ("bash" or "zsh")."""
    body = _bash_function(parser)
    if shell == "bash":
        return "# skyexport completion for bash\n" + body + \
            "complete -o filenames -F _skyexport skyexport\n"
    if shell == "zsh":
        return ("#compdef skyexport\n# skyexport completion for zsh (through bashcompinit)\n"
                "autoload -U +X compinit && { (( $+functions[compdef] )) || compinit -u; }\n"
                "autoload -U +X bashcompinit && bashcompinit\n" + body
                + "complete -o filenames -F _skyexport skyexport\n")
    raise ValueError(f"no completion for shell {shell!r}")


def run(args: argparse.Namespace) -> int:
    from .parser import build_parser

    sys.stdout.write(script(build_parser(), args.shell))
    return EXIT_OK


