//! Failing cases found by the properties, kept as plain tests.
