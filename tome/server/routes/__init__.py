"""The HTTP routes: thin functions over the server's state; auth and limits come in as
dependencies."""
