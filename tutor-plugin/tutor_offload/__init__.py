"""tutor-contrib-offload: run offload inside a Tutor platform's Compose network or namespace."""
