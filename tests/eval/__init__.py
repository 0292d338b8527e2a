"""Tests of the eval part of the project."""
