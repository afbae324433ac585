"""The Redis backends of the stores: one Redis holds all three, one Lua script per step."""
