"""The HTTP layer: the Falcon app, the request pipeline, routes, request targets and static files.

It imports the core and the operations layer. Importing this package imports no Falcon: its modules do."""
