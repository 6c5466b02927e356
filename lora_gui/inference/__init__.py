"""Using a trained adapter: loading it and predicting (``predict``), measuring it (``evaluate``)."""
