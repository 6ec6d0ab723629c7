"""The three benchmarks as data: their subjects, the name each subject's description uses, and the
categories the benchmarks' own papers report (a subject may count in two: C-Eval's Hard subjects are
also STEM, CMMLU's China-specific ones also belong to one of its four others).

The descriptions and question text are lm-evaluation-harness's (tasks ceval-valid, cmmlu, mmlu), so
`--protocol harness` builds the very prompts the harness builds; tests compare every subject with the
harness's own task files.
"""

from __future__ import annotations

from dataclasses import dataclass


OTHER = "Other"
"""The category of a subject that a benchmark's map does not know (counted there, with a warning)."""


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: how its files are laid out, how its questions are asked, how it is reported."""

    name: str
    title: str
    splits: tuple[str, ...]
    """The splits that can be evaluated (few-shot examples always come from dev)."""
    default_split: str
    """The split lm-evaluation-harness evaluates."""
    header: tuple[str, ...] | None
    """The columns a file's header names (None: the files have no header row)."""
    names: dict[str, str]
    """subject -> the words for it in the description (MMLU: the subject with spaces)."""
    categories: dict[str, tuple[str, ...]]
    description_format: str
    answer_prompt: str
    subject_suffix: bool
    """Whether file names end in _{split} (C-Eval, MMLU) or are the bare subject (CMMLU)."""
    withheld_split: str | None = None
    """The split whose answers are not published (C-Eval's test: its site scores submissions)."""

    def description(self, subject: str) -> str:
        return self.description_format.format(self.names.get(subject, subject.replace("_", " ")))

    def categories_of(self, subject: str) -> tuple[str, ...]:
        found = tuple(name for name, subjects in self.categories.items() if subject in subjects)
        return found or (OTHER,)

    def category_names(self) -> tuple[str, ...]:
        return tuple(self.categories) if OTHER in self.categories else (*self.categories, OTHER)


def _subjects(text: str) -> tuple[str, ...]:
    return tuple(text.split())


CEVAL_NAMES = {
    "computer_network": "计算机网络", "operating_system": "操作系统", "computer_architecture": "计算机组成",
    "college_programming": "大学编程", "college_physics": "大学物理", "college_chemistry": "大学化学",
    "advanced_mathematics": "高等数学", "probability_and_statistics": "概率统计", "discrete_mathematics": "离散数学",
    "electrical_engineer": "注册电气工程师", "metrology_engineer": "注册计量师", "high_school_mathematics": "高中数学",
    "high_school_physics": "高中物理", "high_school_chemistry": "高中化学", "high_school_biology": "高中生物",
    "middle_school_mathematics": "初中数学", "middle_school_biology": "初中生物", "middle_school_physics": "初中物理",
    "middle_school_chemistry": "初中化学", "veterinary_medicine": "兽医学", "college_economics": "大学经济学",
    "business_administration": "工商管理", "marxism": "马克思主义基本原理", "mao_zedong_thought": "毛泽东思想和中国特色社会主义理论体系概论",
    "education_science": "教育学", "teacher_qualification": "教师资格", "high_school_politics": "高中政治",
    "high_school_geography": "高中地理", "middle_school_politics": "初中政治", "middle_school_geography": "初中地理",
    "modern_chinese_history": "近代史纲要", "ideological_and_moral_cultivation": "思想道德修养与法律基础", "logic": "逻辑学",
    "law": "法学", "chinese_language_and_literature": "中国语言文学", "art_studies": "艺术学", "professional_tour_guide": "导游资格",
    "legal_professional": "法律职业资格", "high_school_chinese": "高中语文", "high_school_history": "高中历史",
    "middle_school_history": "初中历史", "civil_servant": "公务员", "sports_science": "体育学", "plant_protection": "植物保护",
    "basic_medicine": "基础医学", "clinical_medicine": "临床医学", "urban_and_rural_planner": "注册城乡规划师",
    "accountant": "注册会计师", "fire_engineer": "注册消防工程师", "environmental_impact_assessment_engineer": "环境影响评价工程师",
    "tax_accountant": "税务师", "physician": "医师资格",
}

CMMLU_NAMES = {
    "agronomy": "农学", "anatomy": "解剖学", "ancient_chinese": "古汉语", "arts": "艺术学", "astronomy": "天文学",
    "business_ethics": "商业伦理", "chinese_civil_service_exam": "中国公务员考试", "chinese_driving_rule": "中国驾驶规则",
    "chinese_food_culture": "中国饮食文化", "chinese_foreign_policy": "中国外交政策", "chinese_history": "中国历史",
    "chinese_literature": "中国文学", "chinese_teacher_qualification": "中国教师资格", "clinical_knowledge": "临床知识",
    "college_actuarial_science": "大学精算学", "college_education": "大学教育学", "college_engineering_hydrology": "大学工程水文学",
    "college_law": "大学法律", "college_mathematics": "大学数学", "college_medical_statistics": "大学医学统计",
    "college_medicine": "大学医学", "computer_science": "计算机科学", "computer_security": "计算机安全",
    "conceptual_physics": "概念物理学", "construction_project_management": "建设工程管理", "economics": "经济学",
    "education": "教育学", "electrical_engineering": "电气工程", "elementary_chinese": "小学语文",
    "elementary_commonsense": "小学常识", "elementary_information_and_technology": "小学信息技术",
    "elementary_mathematics": "初等数学", "ethnology": "民族学", "food_science": "食品科学", "genetics": "遗传学",
    "global_facts": "全球事实", "high_school_biology": "高中生物", "high_school_chemistry": "高中化学",
    "high_school_geography": "高中地理", "high_school_mathematics": "高中数学", "high_school_physics": "高中物理学",
    "high_school_politics": "高中政治", "human_sexuality": "人类性行为", "international_law": "国际法学", "journalism": "新闻学",
    "jurisprudence": "法理学", "legal_and_moral_basis": "法律与道德基础", "logical": "逻辑学", "machine_learning": "机器学习",
    "management": "管理学", "marketing": "市场营销", "marxist_theory": "马克思主义理论", "modern_chinese": "现代汉语",
    "nutrition": "营养学", "philosophy": "哲学", "professional_accounting": "专业会计", "professional_law": "专业法学",
    "professional_medicine": "专业医学", "professional_psychology": "专业心理学", "public_relations": "公共关系",
    "security_study": "安全研究", "sociology": "社会学", "sports_science": "体育学", "traditional_chinese_medicine": "中医中药",
    "virology": "病毒学", "world_history": "世界历史", "world_religions": "世界宗教",
}

CEVAL = Benchmark(
    name="ceval", title="C-Eval", splits=("val", "test"), default_split="val",
    header=("id", "question", "A", "B", "C", "D", "answer"), names=CEVAL_NAMES,
    categories={
        "STEM": _subjects(
            "computer_network operating_system computer_architecture college_programming college_physics "
            "college_chemistry advanced_mathematics probability_and_statistics discrete_mathematics electrical_engineer "
            "metrology_engineer high_school_mathematics high_school_physics high_school_chemistry high_school_biology "
            "middle_school_mathematics middle_school_biology middle_school_physics middle_school_chemistry "
            "veterinary_medicine"),
        "Social Science": _subjects(
            "college_economics business_administration marxism mao_zedong_thought education_science "
            "teacher_qualification high_school_politics high_school_geography middle_school_politics "
            "middle_school_geography"),
        "Humanities": _subjects(
            "modern_chinese_history ideological_and_moral_cultivation logic law chinese_language_and_literature "
            "art_studies professional_tour_guide legal_professional high_school_chinese high_school_history "
            "middle_school_history"),
        "Other": _subjects(
            "civil_servant sports_science plant_protection basic_medicine clinical_medicine urban_and_rural_planner "
            "accountant fire_engineer environmental_impact_assessment_engineer tax_accountant physician"),
        "Hard": _subjects(
            "advanced_mathematics discrete_mathematics probability_and_statistics college_chemistry college_physics "
            "high_school_mathematics high_school_chemistry high_school_physics"),
    },
    description_format="以下是中国关于{}的单项选择题，请选出其中的正确答案。\n\n", answer_prompt="答案：", subject_suffix=True,
    withheld_split="test",
)

CMMLU = Benchmark(
    name="cmmlu", title="CMMLU", splits=("test",), default_split="test",
    header=("Question", "A", "B", "C", "D", "Answer"), names=CMMLU_NAMES,
    categories={
        "STEM": _subjects(
            "anatomy astronomy college_actuarial_science college_engineering_hydrology college_mathematics "
            "college_medical_statistics computer_science conceptual_physics electrical_engineering "
            "elementary_mathematics genetics high_school_biology high_school_chemistry high_school_mathematics "
            "high_school_physics machine_learning virology"),
        "Humanities": _subjects(
            "arts chinese_history chinese_literature college_law global_facts international_law jurisprudence "
            "logical marxist_theory philosophy professional_law world_history world_religions"),
        "Social Science": _subjects(
            "ancient_chinese business_ethics chinese_civil_service_exam chinese_food_culture chinese_foreign_policy "
            "chinese_teacher_qualification college_education economics education elementary_chinese ethnology "
            "high_school_geography high_school_politics journalism management marketing modern_chinese "
            "professional_accounting professional_psychology public_relations security_study sociology"),
        "Other": _subjects(
            "agronomy chinese_driving_rule clinical_knowledge college_medicine computer_security "
            "construction_project_management elementary_commonsense elementary_information_and_technology "
            "food_science human_sexuality legal_and_moral_basis nutrition professional_medicine sports_science "
            "traditional_chinese_medicine"),
        "China specific": _subjects(
            "ancient_chinese chinese_civil_service_exam chinese_driving_rule chinese_food_culture "
            "chinese_foreign_policy chinese_history chinese_literature chinese_teacher_qualification "
            "construction_project_management elementary_chinese elementary_commonsense ethnology "
            "high_school_politics modern_chinese traditional_chinese_medicine"),
    },
    description_format="以下是关于{}的单项选择题，请直接给出正确答案的选项。\n\n", answer_prompt="答案：", subject_suffix=False,
)

MMLU_CATEGORIES = {
    "STEM": _subjects(
        "abstract_algebra anatomy astronomy college_biology college_chemistry college_computer_science "
        "college_mathematics college_physics computer_security conceptual_physics electrical_engineering "
        "elementary_mathematics high_school_biology high_school_chemistry high_school_computer_science "
        "high_school_mathematics high_school_physics high_school_statistics machine_learning"),
    "Humanities": _subjects(
        "formal_logic high_school_european_history high_school_us_history high_school_world_history "
        "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy prehistory "
        "professional_law world_religions"),
    "Social Sciences": _subjects(
        "econometrics high_school_geography high_school_government_and_politics high_school_macroeconomics "
        "high_school_microeconomics high_school_psychology human_sexuality professional_psychology public_relations "
        "security_studies sociology us_foreign_policy"),
    "Other": _subjects(
        "business_ethics clinical_knowledge college_medicine global_facts human_aging management marketing "
        "medical_genetics miscellaneous nutrition professional_accounting professional_medicine virology"),
}

MMLU = Benchmark(
    name="mmlu", title="MMLU", splits=("val", "test"), default_split="test", header=None,
    names={subject: subject.replace("_", " ") for subjects in MMLU_CATEGORIES.values() for subject in subjects},
    categories=MMLU_CATEGORIES,
    description_format="The following are multiple choice questions (with answers) about {}.\n\n",
    answer_prompt="Answer:", subject_suffix=True,
)

BENCHMARKS = {benchmark.name: benchmark for benchmark in (CEVAL, CMMLU, MMLU)}


def category_key(name: str) -> str:
    """A category as a metric name: "Social Science" -> "social_science"."""
    return name.lower().replace(" ", "_")

LOOSE_FILES = Benchmark(
    name="choice", title="multiple-choice", splits=(), default_split="", header=None, names={}, categories={},
    description_format="", answer_prompt="答案：", subject_suffix=False,
)
"""How `yayi eval --task choice` asks the questions of its own files: each alone (no description, no examples),
the options, then "答案：" as C-Eval and CMMLU do."""
