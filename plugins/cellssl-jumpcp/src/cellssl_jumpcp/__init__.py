"""cellssl-jumpcp: JUMP Cell Painting plates (load_data tables, illumination functions, plate maps) as cellssl
datasets (``jump_sites``, ``jump_cells``) and the JUMP profiling evaluation (``jump_map``: well profiles,
per-plate normalisation against negative controls, mAP and fraction retrieved)."""

__version__ = "0.1.0"
