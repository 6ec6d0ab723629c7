"""The `yayi` Typer app (the top layer): parses, calls one library function per command, prints."""
