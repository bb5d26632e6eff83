"""Pure methods of both papers: tensors and strings in, values out; nothing here knows about the database."""
