"""Datasets that yield device-resident episode samplers."""
