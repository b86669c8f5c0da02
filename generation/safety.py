"""Crisis check: flag generated dialogues in which the seeker discloses a risk to life or safety.

Every generated dialogue passes through ``check_texts`` (its description plus the seeker's turns)
before a human annotator sees it. A flagged dialogue goes to the lead for review first, so that
annotators are not shown it unprepared and so that the dataset never teaches a model to answer a
disclosure of risk with routine support. The check is rule-based (regular expressions, our own
wording), cheap, deterministic and explainable: every hit reports the sentence that matched.

Categories (the four kinds of risk that safe-messaging guidance asks a supporter to act on,
rather than merely comfort):

* ``suicide``        - thoughts, intent or plans to end one's life, including the indirect signals
  chatbots are known to miss: feeling one is a burden "for much longer", everyone being better off
  without one, wanting to disappear for good or not wake up, saying goodbyes, giving belongings
  away, stockpiling medication, "no point in going on".
* ``self_harm``      - hurting oneself without (stated) intent to die: cutting, hurting oneself on
  purpose, hiding marks or scars, pain as the only way to cope.
* ``harm_to_others`` - intent, urges or thoughts of hurting another person (including intrusive
  thoughts about hurting one's child), threats, stalking.
* ``abuse``          - violence, sexual abuse, threats or coercion the seeker is suffering *now*
  (a partner, parent or carer who hits, chokes, forces, threatens, locks in; hiding bruises,
  covering stories, being afraid to go home). Abuse told as clearly past history ("he used to hit
  me when I was a child") is not flagged: that is the ordinary content of healing-from-abuse
  dialogues, not an emergency.

What it deliberately does not flag: figures of speech ("this exam is killing me", "my boss will
murder me", "I'd rather die than...", "cut costs", "shoot me an email"), grief, breakups, exam
stress and low mood without a risk signal. Negations ("I'm not suicidal") are NOT excluded: a
mention of suicide or self-harm in a generated dialogue is worth a human look either way.

Matching is case-insensitive and runs on a normalised copy of each sentence: curly apostrophes
become straight, contractions are expanded ("don't"/"dont" -> "do not", "I'm"/"im" -> "i am",
"won't" -> "will not", "gonna" -> "going to"), whitespace is collapsed. The patterns are written
against that normal form. A rule-based check has limits (sarcasm, long-range context, new slang);
it is a gate in front of human review, not a clinical assessment.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

CATEGORIES: tuple[str, ...] = ("suicide", "self_harm", "harm_to_others", "abuse")


@dataclass(frozen=True)
class CrisisCheck:
    flagged: bool
    categories: tuple[str, ...]  # subset of CATEGORIES, in that order
    matches: tuple[str, ...]  # the sentences that matched, as written, for the reviewing lead


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"})

# Contractions written without an apostrophe (common in chat). "ill", "id", "were", "wed",
# "its", "hell", "shell" are real words and are left alone.
_BARE = {
    "dont": "do not",
    "doesnt": "does not",
    "didnt": "did not",
    "cant": "can not",
    "cannot": "can not",
    "wont": "will not",
    "wouldnt": "would not",
    "couldnt": "could not",
    "shouldnt": "should not",
    "isnt": "is not",
    "arent": "are not",
    "wasnt": "was not",
    "werent": "were not",
    "havent": "have not",
    "hasnt": "has not",
    "aint": "is not",
    "im": "i am",
    "ive": "i have",
    "youre": "you are",
    "theyre": "they are",
    "theyll": "they will",
    "itll": "it will",
    "gonna": "going to",
    "wanna": "want to",
    "gotta": "have to",
}
_BARE_RE = re.compile(r"\b(" + "|".join(_BARE) + r")\b")
_SPECIAL_NT = {"won't": "will not", "can't": "can not", "shan't": "shall not", "ain't": "is not"}
_SPECIAL_NT_RE = re.compile(r"\b(won't|can't|shan't|ain't)")
_S_IS = re.compile(r"\b(it|that|what|there|here|he|she|who|where|how|everything|nothing)'s\b")


def normalise(text: str) -> str:
    """Lower case, straight apostrophes, expanded contractions, single spaces."""
    t = (text or "").translate(_APOSTROPHES).lower()
    t = _SPECIAL_NT_RE.sub(lambda m: _SPECIAL_NT[m.group(1)], t)
    t = re.sub(r"n't\b", " not", t)
    t = re.sub(r"\bi'm\b", "i am", t)
    t = re.sub(r"'re\b", " are", t)
    t = re.sub(r"'ve\b", " have", t)
    t = re.sub(r"'ll\b", " will", t)
    t = re.sub(r"'d\b", " would", t)
    t = _S_IS.sub(lambda m: m.group(1) + " is", t)
    t = _BARE_RE.sub(lambda m: _BARE[m.group(1)], t)
    return re.sub(r"\s+", " ", t).strip()


# --------------------------------------------------------------------------------------------
# Patterns (written against the normal form above)
# --------------------------------------------------------------------------------------------

# People who can be on either end of violence.
_REL = (
    r"(?:husband|wife|partner|boyfriend|girlfriend|bf|gf|fianc[eé]e?|ex|dad|father|mum|mom|"
    r"mother|parents?|step ?(?:dad|father|mum|mom|mother)|stepdad|stepfather|stepmum|stepmom|"
    r"stepmother|uncle|aunt|auntie|brother|sister|cousin|grandfather|grandad|grandpa|"
    r"grandmother|grandma|nan|carer|caregiver|guardian|boss|manager|coach|teacher|"
    r"flatmate|roommate|housemate|neighbou?r|landlord|son|daughter|"
    r"(?:mum|mom|mother|dad)'s (?:boyfriend|girlfriend|partner))"
)
_CHILD = r"(?:baby|newborn|child|children|kids?|son|daughter|toddler)"
_OTHER = (
    rf"(?:him|her|them|someone|somebody|people|everyone|everybody|anyone|"
    rf"(?:my|his|her|the|that|this|those|these) (?:{_REL}|{_CHILD}|coworkers?|co-workers?|"
    rf"colleagues?|classmates?|friends?|family|guy|girl|man|woman|people|kids at \w+))(?!'s|s\b)"
)
_SUBJECT = rf"\b(?:he|she|they|(?:my|our|his|her) {_REL})\b"
_GAP = r"[^.!?;]{0,60}?"  # some words within one clause
_EOC = r"(?=\s*(?:[.!?,;:]|$|anymore|any more|at all|now|and|but|so|because))"  # end of clause

_SUICIDE = [
    r"\bsuicid\w*",
    r"\b(?:kill|killing|killed|unalive|unaliving) (?:my ?self|myself)\b",
    r"\b(?:to|will|might|could|gonna) off myself\b",
    r"\bunalive\b",
    r"\bkms\b",
    r"\b(?:end|ending|ended|take|taking|took) (?:my own life|my life(?! (?:in|into|back|to|seriously|for granted|over|around)\b))",
    r"\bend(?:ing)? (?:it all|everything|my suffering for good)\b",
    # "end it / end things" is also how people speak of relationships: only with "I" intending it
    r"(?:^|\bi )(?:just |really )?(?:want|wanted|am going|am ready|have decided|decided|plan|am planning|feel like i want|am tempted) to end (?:it|things)(?! with\b)(?=\s*(?:[.!?,;]|$|for good|once and for all|tonight|soon|now))",
    r"\b(?:thinking|thought|think) (?:a lot )?(?:about|of) ending (?:it|things)(?! with\b)(?=\s*(?:[.!?,;]|$|for good|once and for all|tonight|soon|now))",
    r"\b(?:want|wanted|wanting|ready) to die\b",
    r"\bi (?:just )?wan(?:t|na) to die\b",
    r"\b(?:wish|wished|wishing) (?:that )?i (?:was|were|could be) dead\b",
    r"\b(?:better off|rather be|want to be|wish to be) dead\b",
    r"\b(?:easier|better|simpler|a relief) (?:for everyone |for me |for them )?(?:to (?:just )?(?:be dead|die|not exist|not be here|not be alive|disappear)|if i (?:just )?(?:was|were) dead)\b",
    r"\bwish(?:ed)? i (?:had never been|was never|were never|had not been) born\b",
    r"\b(?:do|did) not want to (?:live|be alive|exist|be here|be around|wake up|go on)" + _EOC,
    r"\b(?:do|did) not want to (?:be alive|exist|wake up|live (?:in this world|on this earth|like this)|be in this world)\b",
    r"\b(?:hope|hoping|hoped|wish|wishing|pray|praying) (?:that )?i (?:do not|will not|would not|never|did not) wake up(?! (?:in time|on time|early|for|before|at)\b)",
    r"\b(?:sleep|go to sleep|fall asleep)\b[^.!?]{0,20}\b(?:and )?(?:never|not) wake up(?! (?:in time|on time|early|for|before|at)\b)",
    r"\bif i (?:just )?never wo(?:ke|ken) up\b",
    r"\b(?:want|wanting|wanted|wish i could|wishing i could|wished i could) (?:to )?(?:just )?(?:go to )?sleep forever\b|\bgo to sleep forever\b",
    r"\b(?:better|happier|easier|lighter|safer|fine|relieved)(?: off)? without me\b",
    r"\bwithout me (?:here|around|in (?:it|the picture|their lives))\b",
    r"\bif i (?:just )?(?:was|were|am|was not|were not|am not) (?:gone|dead|not here|not around|no longer here|no longer around)(?! (?:on|for|to|from|at|in)\b)\b",
    r"\bwhen i am (?:gone|dead)(?! (?:on|for|to|from|at|in|away)\b)\b",
    r"\bif i (?:just )?(?:died|disappeared|did not exist|was not alive|stopped existing)\b",
    r"\b(?:after|once) i am (?:gone|dead|not around|not here|no longer (?:here|around))(?! (?:on|for|to|from|at|in|away)\b)",
    r"\bstop(?:ped|ping)? existing\b|\bcease to exist\b|\bnot exist anymore\b",
    r"\bdisappear(?:ed|ing)? (?:for good|forever|permanently|from (?:this|the) (?:world|earth|planet))\b",
    r"\b(?:no|any|what is the|what) (?:point|reason|purpose) (?:in |of |to )?(?:living|going on|carrying on|being alive|staying alive|life|to live|to go on|keep going|to keep going|being here|anything(?: anymore)?|it all)\b",
    r"\bno (?:reason|point) for me to (?:stay|stick around|be here|live|keep going|go on|carry on)\b",
    r"\bwhy (?:bother|should i|even) (?:staying alive|living|going on|carrying on|be alive|live|stay alive|keep living)\b",
    r"\b(?:life|living) (?:is not|is no longer|does not feel|is hardly) worth (?:living|it)\b|\bnot worth living\b",
    r"\b(?:lost|losing|lose|no) (?:the |my |any )?will to live\b",
    r"\btired of (?:being alive|existing|life\b(?! of)|living" + _EOC + r")",
    r"\b(?:not|never) (?:be|being) (?:anyone's|anybody's|everyone's|your|a|their|his|her|the) (?:problem|burden|bother)\b",
    r"\bnone of this will be my problem\b",
    r"\b(?:burden|weight on|drain on)\b[^.!?]{0,50}\b(?:for good|forever|permanently|much longer|for (?:much )?longer|for long|anymore|any more|soon)\b",
    r"\bi am (?:just |only |nothing but |such )?a (?:burden|drain|weight) (?:to|on|for) (?:everyone|everybody|all of them|my (?:whole )?family|the people|them all)\b",
    r"\b(?:giv|hand)(?:e|es|ing|en|ed)? (?:away |out )?(?:all )?(?:of )?my (?:things|stuff|belongings|possessions|valuables)\b",
    r"\bgave (?:away |out )?(?:all )?(?:of )?my (?:things|stuff|belongings|possessions|valuables)\b",
    r"\b(?:giv|hand)(?:e|es|ing|en|ed)? (?:away|out) (?:all )?(?:of )?(?:my )?(?:things|stuff|belongings|possessions|valuables|everything i own)\b",
    r"\bsa(?:y|id|ying) (?:my )?goodbyes?\b[^.!?]{0,40}\b(?:for the last time|one last time|in my own way|quietly|just in case|for good|forever)\b",
    r"\bquietly sa(?:y|id|ying) (?:my )?goodbyes?\b",
    r"\bsa(?:y|id|ying) my goodbyes to (?:everyone|everybody|the people|my (?:family|friends|kids|children))\b",
    r"\b(?:goodbye|farewell) (?:note|letter|message)s?\b",
    r"\b(?:wrote|written|writing|write|made|making|updated?|sorted out) my will\b",
    r"\b(?:stockpil\w*|hoard\w*|stash\w*|sav\w* up) (?:up )?(?:all )?(?:of )?(?:my )?(?:old )?(?:pills|meds|medication|medicine|tablets|painkillers|sleeping pills)\b",
    r"\b(?:pills|meds|medication|tablets|painkillers)\b[^.!?]{0,30}\b(?:stockpil|hoard|stash)\w*",
    r"\b(?:this|it) (?:is|will be) my last (?:week|day|night|goodbye|message|birthday|christmas)\b",
    r"\b(?:do not|not|no longer) (?:plan|planning|intend|intending) (?:on|to) (?:be|being|stay|staying) (?:here|around|alive)\b(?! (?:this|next week|tomorrow|today|tonight|at|on|in|during)\b)",
    r"\b(?:do not|can not|could not|can never) (?:see|imagine|picture) myself (?:still )?(?:being )?alive\b",
    r"\b(?:do not|can not|could not|can never) (?:see|imagine|picture) myself (?:still )?being (?:here|around) (?:by|for|much longer|next (?:week|month|year)|at christmas)\b",
    r"\bmy own funeral\b",
    r"\b(?:check|checking|checked) out (?:of (?:this|life|this life|this world)|for good)\b",
    r"\b(?:nobody|no one|no-one|anyone) would (?:even )?(?:notice|care|miss me)[^.!?]{0,30}\bif i (?:was|were|am|died|disappeared)\b",
    r"\b(?:nobody|no one|no-one) would (?:even )?miss me\b",
]

_SELF_HARM = [
    r"\bself[- ]?harm\w*|\bself[- ]?injur\w*|\bself[- ]?mutilat\w*|\bself[- ]?abus\w*",
    r"\bcut(?:s|ting)? (?:my ?self|myself)\b",
    r"\b(?:been|started|start|keep|kept|stop|stopped) cutting(?! (?:back|down|out|corners|costs|ties|class|classes|school|my hair|(?:my |the |our )?(?:budget|spending|hours)))\b",
    r"\bcutting (?:again|my (?:arms?|wrists?|legs?|thighs?|skin|stomach))\b",
    r"\b(?:urge|urges|temptation|craving) to (?:cut|hurt myself|harm myself|self harm|burn myself)\b(?! (?:costs|back|down|ties|corners|class)\b)",
    r"\b(?:hurt|hurting|harm|harming|harmed|burn|burning|burned|burnt|scratch|scratching|scratched|hit|hitting|punish|punishing|punished|starv\w+) (?:my ?self|myself)\b[^.!?]{0,30}\b(?:on purpose|deliberately|again|to feel|to cope|to punish|as (?:a )?punishment|when|whenever|until|because)",
    r"\b(?:hurting|harming|hit|hitting|harm) myself\b",
    r"\bhurt myself(?! (?:at|in|during|playing|while|lifting|running|skiing|falling|on the|doing|training|at work))\b",
    r"\b(?:hurting|harming|hitting|punishing) my (?:body|own body|self)\b",
    r"\b(?:cuts|scars|marks|burns|wounds)\b[^.!?]{0,20}\bon my (?:arms?|wrists?|legs?|thighs?|skin|stomach|hips?)\b",
    r"\b(?:fresh|new) (?:cuts|scars|marks|wounds)\b",
    r"\b(?:arms?|wrists?|legs?|thighs?|skin) (?:is |are )?(?:covered in|full of|all) (?:marks|scars|cuts|wounds)\b",
    r"\blong sleeves\b[^.!?]{0,60}\b(?:arms?|wrists?|scars|cuts|marks)\b",
    r"\b(?:hide|hiding|hid|cover|covering) (?:up )?(?:the |my )?(?:cuts|scars|marks on my)\b",
    r"\bpain is the only thing (?:that |which )?(?:is )?(?:helps|helping|makes|quiets|calms|numbs|stops|works|lets me|tells|telling|reminds|reminding)\b",
    r"\bhurting (?:myself|my body|my self)? ?is the only (?:thing|way)\b",
    r"\bthe only (?:thing|way)[^.!?]{0,30}\b(?:is|by) (?:hurting|harming|cutting|punishing) (?:myself|my body)\b",
    r"(?<!not )\bdeserve (?:the |this )?pain\b|(?<!not )\bdeserve to (?:be punished|hurt|suffer|feel pain|bleed|be hurt)\b",
    r"\b(?:keep|kept|keeping|hid|hide|hidden|hiding|stash\w*)\b[^.!?]{0,20}\b(?:something sharp|a blade|blades|razor blades?)\b",
    r"\b(?:something sharp|a blade|blades|razor blades?)\b[^.!?]{0,20}\bhidden\b",
    r"\b(?:hit|hitting|punch\w*|bang\w*|scratch\w*)\b[^.!?]{0,40}\buntil (?:it|they|my \w+) (?:bleed|bled|bleeds|bleeding|bruised)\b",
]

_HARM_OTHERS_VERB = r"(?:kill|murder|hurt|harm|stab|strangle|choke|beat up|beat \w+ up|attack|smother|hit|punch|poison)"
# not "hurt her feelings", "hit him up", "beat them at chess"
_OTHER_END = (
    r"(?!'s)(?! (?:up|back|feelings|pride|chances|career|reputation|business|at|in the (?:final|game|match|race)"
    r"|with (?:the|an?|my) (?:news|email|message|question|truth))\b)"
)
_HARM_OTHERS = [
    # I + intention/ability + verb + person. "I could kill him" / "I could have strangled him"
    # (hyperbole) and "I'd kill for" are left out on purpose.
    r"\bi (?:will|am going to|swear i will|am really going to|want to|really want to|would like to|intend to|plan to|am planning to|might|might actually|could seriously|could really|could actually|am scared i will|am afraid i will|am scared i might|am afraid i might|am worried i will|am worried i might|need to|have to|feel like i (?:could|might|will) (?:seriously |really |actually )?)\s*(?!(?:never|not|ever)\b)(?:\w+ )?"
    + _HARM_OTHERS_VERB
    + r"\w* "
    + _OTHER
    + _OTHER_END,
    r"\b(?:thoughts?|thinking|think|thought|fantasi[sz]\w*|dream\w*|urges?|impulses?|images?|ideas?) (?:about|of|to) (?:\w+ )?(?:kill|murder|hurt|harm|stab|strangle|choke|beat \w+ up|beat up|attack|smother|shak|hit|punch|poison)\w* "
    + _OTHER
    + _OTHER_END,
    r"\b(?:someone|somebody) (?:is |will |would )?(?:going to |gonna )?(?:get|end up) (?:hurt|killed|dead)\b",
    r"\b(?:be|all be|will be|are going to be) sorry (?:after|for|when (?:they|he|she) see) what i\b",
    r"\bwhat i (?:am going to|will|plan to|have planned to) do (?:at|to) (?:school|work|the office|college|class|them|him|her|everyone)\b",
    r"\b(?:no idea|do not know|will not know) what is coming (?:to|for) (?:them|him|her|everyone)\b",
    r"\b(?:scared|afraid|terrified|worried|frightened) (?:of|about) what i (?:will|might|would|could|am going to) do to "
    + _OTHER,
    r"\b(?:going to|will|gonna) make (?:him|her|them|everyone|those people) pay\b",
    r"\bi (?:\w+ ){0,4}(?:beat|beating|kick|kicking|knock|knocking|punch|punching) the (?:crap|shit|hell|living daylights|life) out of\b",
    r"(?<!not )\b(?:i|part of me) (?:really |just |kind of |sometimes )?(?:want|wants|wish|wishes) (?:him|her|them|\w+ and \w+|my \w+) (?:to die|dead|to be dead)\b",
    r"\b(?:regret|rue) (?:ever )?(?:crossing|messing with|hurting) me\b",
    r"\bget back at (?:him|her|them)\b[^.!?]{0,60}\b(?:never recover|hurt|physically|pay|bleed|suffer)\b",
    r"\b(?:watch|watching|follow|following)\w* (?:her|his|their) (?:house|home|flat|place|car)\b[^.!?]{0,60}\b(?:alone|at night)\b",
    r"\bknow when (?:she|he|they) (?:is|are) (?:alone|home alone|by (?:herself|himself|themselves))\b",
    r"\b(?:bring|bringing|take|taking|brought|took|carry|carrying)\w* (?:a |my |my dad's |the )?(?:gun|knife|knives|weapon|weapons|rifle|pistol)s? (?:to|into) (?:school|work|the office|college|class|church|the party)\b",
]

# Violence verbs done TO the seeker by a person ("he hits me", "my partner chokes me").
_ABUSE_VERB = (
    r"(?:hits|hit|hitting|beats|beat|beating|beaten|slaps|slapped|slapping|punches|punched|"
    r"kicks|kicked|chokes|choked|choking|strangles|strangled|strangling|shoves|shoved|shoving|"
    r"throws|threw|thrown|grabs|grabbed|pinches|pinched|burns|burned|burnt|bites|bit|"
    r"locks|locked|ties|tied|rapes|raped|molests|molested|abuses|abused|"
    r"touches|touched|touching|"
    r"drags|dragged|pushes|pushed|pushing|spits on|spat on)"
)
_ABUSE_NOW = [
    _SUBJECT
    + _GAP
    + r"(?<!not )(?<!never )\b"
    + _ABUSE_VERB
    + r" (?:(?:my \w+|\w+) and )?(?:me|us)\b"
    # not: "pushes me to do better", "pushed me away", "threw me a party", "beat me at chess"
    + r"(?! (?:to|away|a|an|some|the|out|off|up|over the edge|hard|harder|too hard|further|so much|deeply|a lot"
    r"|emotionally|with (?:his|her|their) words|at (?:chess|cards|\w+ing|the game|tennis|football)"
    r"|in the (?:final|race|game|match|exam|competition|argument|debate)|on the (?:shoulder|arm|back|cheek|hand))\b)",
    # "hurt" is often emotional: present tense ("he hurts me") or past with a physical sign only
    _SUBJECT
    + _GAP
    + r"\b(?:hurts|is hurting|keeps hurting|has been hurting) (?:me|us)\b"
    + r"(?! (?:feelings|so much|deeply|emotionally|when (?:he|she|they) (?:says|ignores|leaves))\b)",
    _SUBJECT
    + _GAP
    + r"(?<!not )(?<!never )\bhurt (?:me|us)\b[^.!?]{0,30}\b(?:physically|last night|yesterday|this morning|bleed\w*|bruis\w*|hospital|badly)\b",
    r"\b(?:rape|raped|raping|sexually assault\w*|sexually abus\w*|molest\w*)\b",
    _SUBJECT
    + _GAP
    + r"\bforc(?:e|es|ed|ing) me (?:to (?:have sex|sleep with|do (?:sexual )?things|touch|watch)|into (?:sex|bed))",
    r"\bmakes? me (?:have sex|do sexual things)\b",
]
_ABUSE_ANY = [
    r"\bthreat\w* to (?:kill|hurt|beat|harm|hit|take the kids from) (?:me|us)\b",
    r"\b(?:said|says|told me|swore|swears|threatened)(?: that)? (?:he|she|they) (?:would|will|is going to|are going to|is gonna) (?:kill|hurt|beat|harm|hit|break) (?:me|us)\b",
    r"\bif i (?:ever )?(?:leave|left|tell|told|report|go to the police|call the police)\b[^.!?]{0,50}\b(?:he|she|they) (?:will|would|is going to|are going to|is gonna) (?:kill|hurt|beat|harm|hit|find) (?:me|us)\b",
    _SUBJECT
    + r" (?:gets|got|becomes|turns|can get|starts getting|is getting) (?:violent|physical|rough)\b",
    r"\b(?:scared|afraid|terrified|frightened) (?:to go|of going|to be) (?:back )?home(?= tonight| today| because of (?:him|her|them|what)| when (?:he|she|they)\b|\s*[.!?,;]|$)",
    r"\b(?:scared|afraid|terrified|frightened|worried) (?:of|about) what (?:he|she|they) (?:will|would|might|is going to|are going to|could) do to (?:me|us)\b",
    r"\btold (?:the |my |our )?(?:doctor|nurse|teacher|school|everyone|people|them|work|boss|friends?|gp|mum|mom|dad)\b[^.!?]{0,20}\bi (?:fell|tripped|slipped|walked into|bumped into|hit my)\b",
    r"\bbruis\w*\b[^.!?]{0,40}\b(?:again|makeup|make-up|long sleeves|cover|hide|nobody|no one|asks?)\b",
    r"\b(?:cover|covering|hide|hiding|hid)\w* (?:up )?(?:the |my |all the )?bruis\w*",
    r"\b(?:locks|locked|lock|shuts|shut) me (?:in|out|up)\b",
    _SUBJECT
    + r" (?:will not|does not|do not|would not) let me (?:eat|leave the house|go to the doctor|call anyone|have any money)\b",
    r"\b(?:push|pushes|pushed|pushing|knock|knocks|knocked|knocking|throw|throws|threw|shove|shoves|shoved) me (?:around|about|down|against|into (?:a|the) (?:wall|door|table|floor|car|cupboard)|over(?! the edge)|to the floor)\b",
    r"\b(?:i am|i have been|living|live|stuck) in an? (?:abusive|violent) (?:relationship|home|marriage|household)\b",
    r"\b(?:is|are|has been|keeps|keep|been) (?:abusing|beating|hitting|raping) (?:me|us)\b",
    r"\babus\w* me (?:physically|sexually|emotionally and physically)\b",
    r"\b(?:being|is|has been|was being|gets) (?:abusive|violent) (?:to|towards|with) (?:me|us)\b",
    r"\bi am (?:a |the )?victim of (?:domestic|sexual|physical|\w+ and \w+) (?:abuse|violence)\b",
    r"\b(?:living|live|stuck|trapped|share a \w+|sharing a \w+|married|in a relationship) (?:with|to) (?:a |an |my )?[^.!?]{0,30}\babusive (?:husband|wife|partner|boyfriend|girlfriend|father|mother|dad|mum|mom|parents?)\b",
    _SUBJECT + r" (?:is|has been|can be|gets) (?:abusive|violent)\b",
    r"\b(?:domestic (?:violence|abuse))\b[^.!?]{0,30}\b(?:right now|at home|every|still|again)\b",
]
# A sentence that tells the abuse as clearly past history (and not recent) is not "now".
_HISTORICAL = re.compile(
    r"\b(?:used to|when i was (?:a |little|young|small|\d+|younger|growing|in (?:school|primary|middle|high school)|\w+teen|ten|eleven|twelve)|as a (?:child|kid|teen\w*|girl|boy)"
    r"|years ago|growing up|in my (?:last|previous|old) relationship|my ex (?:used to|would)"
    r"|in (?:my )?childhood|back then|in the past)\b"
)
_RECENT = re.compile(
    r"\b(?:again|still|last night|yesterday|tonight|today|this (?:morning|week|evening|afternoon)"
    r"|last week|right now|keeps?|has started|started again)\b"
)


def _compile(patterns: list[str]) -> list[re.Pattern[str]]:
    # One alternation per rule: a single scan of the sentence instead of one per pattern.
    return [re.compile("|".join(f"(?:{p})" for p in patterns))]


_RULES: list[tuple[str, list[re.Pattern[str]], bool]] = [
    # (category, patterns, only when not told as past history)
    ("suicide", _compile(_SUICIDE), False),
    ("self_harm", _compile(_SELF_HARM), False),
    ("harm_to_others", _compile(_HARM_OTHERS), False),
    ("abuse", _compile(_ABUSE_NOW), True),
    ("abuse", _compile(_ABUSE_ANY), False),
]

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_SPLIT.split(text or "") if s and s.strip()]


def sentence_categories(sentence: str) -> set[str]:
    """The categories one sentence triggers (used by check_texts; handy when debugging)."""
    return set(_categories(sentence))


@functools.lru_cache(maxsize=1 << 16)
def _categories(sentence: str) -> frozenset[str]:
    # Cached: the same sentences come back (a dialogue screened again, seeds, DRI candidates).
    norm = normalise(sentence)
    if not norm:
        return frozenset()
    found: set[str] = set()
    historical = bool(_HISTORICAL.search(norm)) and not _RECENT.search(norm)
    for category, patterns, now_only in _RULES:
        if category in found or (now_only and historical):
            continue
        if any(p.search(norm) for p in patterns):
            found.add(category)
    return frozenset(found)


def check_texts(texts: list[str]) -> CrisisCheck:
    """Check several texts together (e.g. a dialogue's description and all its seeker turns).

    Each text is split into sentences; a sentence that matches any pattern contributes its
    categories and is reported (as written, once) in ``matches``.
    """
    categories: set[str] = set()
    matches: list[str] = []
    for text in texts:
        for sentence in _sentences(text):
            found = sentence_categories(sentence)
            if found:
                categories |= found
                if sentence not in matches:
                    matches.append(sentence)
    ordered = tuple(c for c in CATEGORIES if c in categories)
    return CrisisCheck(flagged=bool(ordered), categories=ordered, matches=tuple(matches))


# Where a flag came from, as the leads' safety queue shows it.
GATE_SOURCES = {
    "imported": "import gate",
    "generated": "generation gate",
    "seed": "seed gate",
}
