-- API processes cache a checked token's role for a few seconds (cloud.api.deps.TokenCache). With several
-- processes (ioc api --workers N) a revoke must reach all of them: every change to a token row, through the
-- API or straight in SQL, is announced on the channel api_tokens_changed (delivered at commit), and each
-- API process listens and forgets that token at once.
CREATE OR REPLACE FUNCTION api_tokens_changed_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('api_tokens_changed', OLD.token_id);
    ELSE
        PERFORM pg_notify('api_tokens_changed', NEW.token_id);
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS api_tokens_changed ON api_tokens;
CREATE TRIGGER api_tokens_changed AFTER UPDATE OR DELETE ON api_tokens
    FOR EACH ROW EXECUTE FUNCTION api_tokens_changed_notify();
