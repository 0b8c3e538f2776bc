"""Units: pure logic, and single modules against moto over HTTP; no file system."""
