-- Superseding a device's active certificates must find them through the
-- device, not by scanning every active certificate of the fleet.
DROP INDEX certificates_by_thing;
CREATE INDEX certificates_by_thing ON certificates (tenant, thing_name, status);
-- Partial, so that a lookup by thing name is never planned on it.
DROP INDEX devices_by_firmware;
CREATE INDEX devices_by_firmware ON devices (tenant, firmware_key) WHERE firmware_key IS NOT NULL;
