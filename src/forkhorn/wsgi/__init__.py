"""WSGI (PEP 3333): the app loader, the environ, start_response and the request cycle."""
