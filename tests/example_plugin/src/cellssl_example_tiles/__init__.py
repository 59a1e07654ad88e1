"""Example cellssl plugin (see CONTRIBUTING.md): ``fov_tiles`` dataset, ``channel_subset`` strategy,
``nearest_centroid`` evaluator."""
