"""Peers: the same TODO API written with other frameworks, measured in the same run as Bastion and the ceiling."""
