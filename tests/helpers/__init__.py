"""Helpers every test uses: the CLI runner and the one-line-failure assertion (cli.py),
real SQLite archives (archives.py), the reference exporter (reference.py), hypothesis
strategies (strategies.py), hostile repository CARs (hostile.py)."""
