"""Tests of the repo part of the project."""
