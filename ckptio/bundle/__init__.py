"""TensorFlow semantics on top of the table: entries, dtypes, strings, slices, readers, writer."""
