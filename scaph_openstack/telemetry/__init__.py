"""What Gnocchi needs to store our meters, and the command that makes it."""
