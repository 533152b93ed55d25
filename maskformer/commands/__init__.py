"""One module per `maskformer` subcommand (see maskformer/cli.py)."""
