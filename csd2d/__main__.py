from ._launch import entrypoint

entrypoint()
