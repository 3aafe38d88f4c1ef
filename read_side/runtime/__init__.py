"""The machinery that runs the read side: engines and table set-up, the projector
worker and its leadership, the listing cache."""
