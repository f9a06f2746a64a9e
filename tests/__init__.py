"""Tests for plantd."""
