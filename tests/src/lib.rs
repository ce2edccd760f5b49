//! End-to-end and interop tests for ward (the suites live in tests/tests/).
