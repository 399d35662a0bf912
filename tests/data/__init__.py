"""Test helpers for ntkit.data: fake data sets in the standard file formats (see ``fakes``)."""
