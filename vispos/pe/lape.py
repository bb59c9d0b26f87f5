"""(family module: see the issue that owns it)"""
