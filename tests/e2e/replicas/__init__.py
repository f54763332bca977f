"""Tests on one mesh with two inference replicas of the embedding model, shared by this
package (conftest.py): replicas killed, hung and overloaded behind Envoy, and a third
replica on another address. A package, so the mesh stops after its last test here."""
