"""spotpool: keeps pools of Tencent Cloud CVM spot instances at the size their users ask for."""

__version__ = "0.1.0"
