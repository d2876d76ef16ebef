"""Tests of mixnb.mixups, one file per module (test_<method>.py); test_registry.py holds what every method must do."""
