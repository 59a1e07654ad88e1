"""Data layer: samples, datasets, image readers, metadata tables and transforms."""
