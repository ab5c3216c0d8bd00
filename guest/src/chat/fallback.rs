//! Chat formats for models whose GGUF has no `tokenizer.chat_template` (base
//! models such as gemma-3-270m). The format follows the special tokens the
//! vocabulary has:
//! - `<start_of_turn>`/`<end_of_turn>`: Gemma's turns (`user` and `model`; a
//!   system message is prepended to the first user turn, as Gemma's own
//!   template does);
//! - `<|im_start|>`/`<|im_end|>`: ChatML;
//! - otherwise a plain transcript, `Role: content` per line, ending in
//!   `Assistant:`.

use crate::tokenizer::Tokenizer;

const GEMMA: &str = "{%- set system = messages[0]['content'] + '\\n\\n' if messages[0]['role'] == 'system' else '' -%}
{%- for message in messages if message['role'] != 'system' -%}
<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}
{{ system if loop.first else '' }}{{ message['content'] | trim }}<end_of_turn>
{% endfor -%}
{%- if add_generation_prompt %}<start_of_turn>model
{% endif -%}";

const CHATML: &str = "{%- for message in messages -%}
<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endfor -%}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif -%}";

const TRANSCRIPT: &str = "{%- for message in messages -%}
{{ message['role'] | capitalize }}: {{ message['content'] }}
{% endfor -%}
{%- if add_generation_prompt %}Assistant:{% endif -%}";

pub fn template(tokenizer: &Tokenizer) -> &'static str {
    let has = |text| tokenizer.id_of(text).is_some();
    if has("<start_of_turn>") && has("<end_of_turn>") {
        GEMMA
    } else if has("<|im_start|>") && has("<|im_end|>") {
        CHATML
    } else {
        TRANSCRIPT
    }
}
