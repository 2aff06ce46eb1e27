"""FHIR R4 interoperability: vitals exported as vital-signs Observations, Observation bundles
imported through device ingest. Plain JSON mapping (no model library at run time): the shapes
are small, fixed, and validated against the ``fhir.resources`` R4 models in the tests."""
