"""One module per `hnn-bridge` sub-command; `hnn_bridge.cli` registers them."""
