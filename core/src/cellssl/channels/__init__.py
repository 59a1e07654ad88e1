"""Channel strategies: how a C-channel image is trained on and turned into one embedding."""
