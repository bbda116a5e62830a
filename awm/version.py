"""The tool's version: written into every report, library entry and cached pair."""
VERSION = "0.4.0"
