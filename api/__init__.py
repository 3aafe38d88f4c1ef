"""The HTTP edge: settings, auth, routes, errors and the taskledger command line."""
