"""`xclr-eval`: evaluation command line (issue #5 builds it)."""

import click


@click.command()
def main() -> None:
    """Evaluate a trained encoder (not available yet)."""
    raise click.ClickException("xclr-eval is not implemented yet (issue #5)")
