"""qrjax tests: one package per qrjax/ subpackage, so test files of the same name import under different names."""
