-- What a token enrolment produced, recorded in the same transaction that
-- consumes the token: a device whose response was lost may retry with the
-- same token and key and receive the same certificate.
ALTER TABLE enrolment_tokens ADD COLUMN certificate_serial TEXT;
ALTER TABLE enrolment_tokens ADD COLUMN public_key_sha256 TEXT;
