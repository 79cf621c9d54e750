-- The BPE keeps its state in a database of its own beside the FHIR server's.
CREATE DATABASE bpe OWNER dsf;
