"""`xclr-train`: the trainer command line (issue #4 builds it)."""

import click


@click.command()
def main() -> None:
    """Train an image encoder with X-CLR on xclr training shards (not available yet)."""
    raise click.ClickException("xclr-train is not implemented yet (issue #4)")
