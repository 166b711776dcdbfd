"""The bottom layer: typed errors, dataset schemas, the wire protocol and the Flower adapter.

Everything else in oncofed builds on these; they import nothing of oncofed's own.
"""
