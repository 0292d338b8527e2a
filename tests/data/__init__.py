"""Tests of the data part of the project."""
