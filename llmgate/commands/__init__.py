"""Sub-commands of the `llmgate` command line, one typer app per module (mounted by llmgate/cli.py)."""
