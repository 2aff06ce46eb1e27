-- Reverts 0009_fhir.
DROP FUNCTION rpm.fhir_patient_readings(uuid, smallint[], timestamptz, timestamptz, timestamptz,
                                        uuid, text, integer);
