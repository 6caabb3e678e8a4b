"""The operator console: the command line (cli/), the link to a remote engine (client/)
and the Textual app (app.py, screens/, widgets/). Importing this package loads no
Textual; only a command that opens a console does."""
