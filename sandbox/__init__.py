"""Local stand-ins for every outside service, speaking their wire protocols (imports no product code)."""
