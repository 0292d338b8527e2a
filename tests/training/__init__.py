"""Tests of the training part of the project."""
