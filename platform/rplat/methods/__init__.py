"""Pure methods of both papers: tensors and strings in, values out; no database in here."""
